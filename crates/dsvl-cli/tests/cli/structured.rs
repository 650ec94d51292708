//! Structured-output flags of `dsvl run` and `dsvl batch` on the tiny random-weight models (whose
//! free text is noise): the printed answer is the constrained one; bad constraints fail before
//! the model loads, naming the problem.

use std::path::PathBuf;

use serde_json::Value;

use super::{dsvl, fixtures, model, stderr, stdout};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsvl-structured-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo_file(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
        .display()
        .to_string()
}

fn run(extra: &[&str]) -> std::process::Output {
    let m = model("siglip-tiny");
    let mut args = vec!["run", "--model", m.as_str(), "--max-tokens", "400"];
    args.extend_from_slice(extra);
    args.push("Read the receipt.");
    dsvl(&args)
}

#[test]
fn run_with_a_schema_a_regex_choices_and_json() {
    let schema = repo_file("examples/receipt.schema.json");
    for seed in ["0", "5"] {
        let o = run(&[
            "--json-schema",
            &schema,
            "--temperature",
            if seed == "0" { "0" } else { "1" },
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        let v: Value = serde_json::from_str(text.trim_end_matches('\n'))
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(
            v["merchant"].is_string() && v["items"].is_array() && v["total"].is_number(),
            "{text}"
        );
    }
    let o = run(&["--regex", "[0-9]{4}-[0-9]{2}-[0-9]{2}"]);
    let text = stdout(&o);
    let t = text.trim_end_matches('\n');
    assert!(
        o.status.success() && t.len() == 10 && t.as_bytes()[4] == b'-',
        "{text:?} {}",
        stderr(&o)
    );
    let o = run(&["--choice", "paid", "--choice", "unpaid"]);
    assert!(
        ["paid", "unpaid"].contains(&stdout(&o).trim_end_matches('\n')),
        "{}",
        stdout(&o)
    );
    // Any JSON object: unbounded, so it may use the whole budget; it starts as one either way.
    let o = run(&["--json"]);
    assert!(
        o.status.success() && stdout(&o).starts_with('{'),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_constraints_fail_before_loading() {
    let dir = temp_dir("bad");
    let bad_schema = dir.join("bad.json");
    std::fs::write(
        &bad_schema,
        r#"{"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": true}}}"#,
    )
    .unwrap();
    let not_json = dir.join("not.json");
    std::fs::write(&not_json, "{oops").unwrap();
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec!["--json-schema", bad_schema.to_str().unwrap()],
            "`uniqueItems` at /properties/tags/uniqueItems",
        ),
        (
            vec!["--json-schema", not_json.to_str().unwrap()],
            "not valid JSON",
        ),
        (
            vec!["--json-schema", "/nonexistent/schema.json"],
            "cannot read /nonexistent/schema.json",
        ),
        (vec!["--regex", "[a-z"], "invalid regex"),
        (vec!["--json", "--regex", "a"], "cannot be used with"),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn batch_applies_the_schema_to_every_item() {
    let dir = temp_dir("batch");
    let out = dir.join("out.jsonl");
    let img = fixtures().join("images/landscape_500x333.png");
    let m = model("siglip-tiny");
    let schema = repo_file("examples/receipt.schema.json");
    let args = [
        "batch",
        "--model",
        m.as_str(),
        "--prompt",
        "Read the receipt.",
        "--output",
        out.to_str().unwrap(),
        "--json-schema",
        schema.as_str(),
        "--max-tokens",
        "400",
        img.to_str().unwrap(),
    ];
    let o = dsvl(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["finish_reason"], "stop", "{line}");
    let answer: Value =
        serde_json::from_str(line["answer"].as_str().unwrap()).expect("the answer is JSON");
    assert!(answer["items"].is_array(), "{answer}");
}
