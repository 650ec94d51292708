//! Page ranges as users write them: `1-3,7`, `5-` (to the last page).

use super::PdfError;

/// The pages of `spec` as 0-based indexes, in the order given, each page once (its first
/// mention wins). `spec` is comma-separated 1-based pages `N` and inclusive ranges `N-M` or
/// `N-` (to the last page); spaces are ignored. A page outside `1..=page_count`, an empty item or
/// a backwards range is an error naming the page count.
pub fn parse_page_ranges(spec: &str, page_count: usize) -> Result<Vec<usize>, PdfError> {
    let fail = |problem: String| PdfError::PageRange {
        spec: spec.to_owned(),
        problem,
    };
    let number = |s: &str| -> Result<usize, PdfError> {
        let n: usize = s
            .parse()
            .map_err(|_| fail(format!("`{s}` is not a page number")))?;
        if n == 0 || n > page_count {
            return Err(fail(format!(
                "page {n} is outside the document, which has {page_count} pages (1-{page_count})"
            )));
        }
        Ok(n)
    };
    let compact: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(fail("no pages given".into()));
    }
    let mut seen = vec![false; page_count];
    let mut pages = Vec::new();
    for item in compact.split(',') {
        let (first, last) = match item.split_once('-') {
            None if item.is_empty() => return Err(fail("an empty item between commas".into())),
            None => (number(item)?, number(item)?),
            Some((a, "")) => (number(a)?, page_count),
            Some((a, b)) => (number(a)?, number(b)?),
        };
        if first > last {
            return Err(fail(format!(
                "range {first}-{last} runs backwards; write it as {last}-{first}"
            )));
        }
        for (p, seen) in seen.iter_mut().enumerate().take(last).skip(first - 1) {
            if !*seen {
                *seen = true;
                pages.push(p);
            }
        }
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_keep_the_given_order_and_drop_repeats() {
        assert_eq!(parse_page_ranges("1-3,7", 10).unwrap(), vec![0, 1, 2, 6]);
        assert_eq!(
            parse_page_ranges(" 7, 2-3 ,2,7 ", 10).unwrap(),
            vec![6, 1, 2]
        );
        assert_eq!(parse_page_ranges("9-", 10).unwrap(), vec![8, 9]);
        assert_eq!(parse_page_ranges("4-4", 4).unwrap(), vec![3]);
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        let msg = |spec: &str, n| parse_page_ranges(spec, n).unwrap_err().to_string();
        assert!(msg("1-12", 10).contains("page 12 is outside the document, which has 10 pages"));
        assert!(msg("0", 10).contains("page 0 is outside"));
        assert!(msg("5-2", 10).contains("range 5-2 runs backwards"));
        assert!(msg("1,,2", 10).contains("empty item"));
        assert!(msg("a-b", 10).contains("`a` is not a page number"));
        assert!(msg("-3", 10).contains("`` is not a page number"));
        assert!(msg("", 10).contains("no pages given"));
        assert!(msg("1", 0).contains("which has 0 pages"));
    }
}
