//! `dsvl chat`: an interactive multi-turn session; history (and images) kept across turns.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;

use dsvl::engine::{ChatMessage, Conversation, ImageSource};
use dsvl::prompt::template::Role;

use super::{generate_params, load_pipeline};
use crate::args::ChatArgs;
use crate::cmd::run::report_timings;
use crate::pdf_input::{is_pdf, pdf_pages};

const HELP: &str =
    "commands: /image PATH (attach an image, or a PDF's pages, to the next message), /clear (forget the conversation), \
/system TEXT (set the system prompt), /exit. Image paths typed in a message are attached too.";

const CHAT_FEATURE_CACHE_BYTES: usize = 512 << 20;

pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    let params = generate_params(&a.sampling, None)?;
    params.sampling.validate()?;
    let pipeline = load_pipeline(&a.model)?;
    let mut system = a.sampling.system.clone();
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut pending: Vec<ImageSource> = Vec::new();
    // Every turn resends the conversation's images and history: their embeddings are computed
    // once, and the prefix shared with the previous turn is not prefilled again.
    let mut conversation = Conversation::new(CHAT_FEATURE_CACHE_BYTES);
    eprintln!("{HELP}");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break; // EOF
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('/') {
            let (cmd, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            match cmd {
                "exit" | "quit" => break,
                "clear" => {
                    history.clear();
                    pending.clear();
                    conversation.clear();
                    eprintln!("(conversation cleared)");
                }
                "system" => {
                    system = (!arg.trim().is_empty()).then(|| arg.trim().to_string());
                    eprintln!("(system prompt set)");
                }
                "image" => {
                    let p = PathBuf::from(arg.trim());
                    if p.is_file() {
                        attach(&mut pending, p, &a);
                    } else {
                        eprintln!("no such file: {}", p.display());
                    }
                }
                _ => eprintln!("unknown command /{cmd}; {HELP}"),
            }
            continue;
        }
        // Image paths typed in the message are attached.
        let mut text = Vec::new();
        for word in line.split_whitespace() {
            let p = PathBuf::from(word);
            if is_image_path(&p) && p.is_file() {
                attach(&mut pending, p, &a);
            } else {
                text.push(word);
            }
        }
        let user =
            ChatMessage::new(Role::User, text.join(" ")).with_images(std::mem::take(&mut pending));
        history.push(user);
        let prepared = match pipeline.prepare(system.as_deref(), &history) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
                continue;
            }
        };
        let outcome = pipeline.generate_in(&mut conversation, &prepared, &params, |ev| {
            let _ = out.write_all(ev.text().as_bytes());
            let _ = out.flush();
            ControlFlow::Continue(())
        });
        writeln!(out)?;
        match outcome {
            Ok(o) => {
                report_timings(&o);
                history.push(ChatMessage::new(Role::Assistant, o.text));
            }
            Err(e) => {
                eprintln!("error: {e}");
                history.pop();
            }
        }
    }
    Ok(())
}

/// Attaches an image to the next message; a PDF attaches its pages (an unreadable one is
/// reported and skipped, the chat goes on).
fn attach(pending: &mut Vec<ImageSource>, p: PathBuf, a: &ChatArgs) {
    if !is_pdf(&p) {
        pending.push(ImageSource::Path(p));
        eprintln!("(image attached to the next message)");
        return;
    }
    match pdf_pages(&p, &a.pdf, a.model.max_image_pixels) {
        Ok(pages) => {
            eprintln!("({} PDF pages attached to the next message)", pages.len());
            pending.extend(pages);
        }
        Err(e) => eprintln!("{e:#}"),
    }
}

fn is_image_path(p: &std::path::Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| {
            [
                "jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "pdf",
            ]
            .contains(&e.as_str())
        })
}
