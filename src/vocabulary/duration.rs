//! Durations as the spec writes them (`15m`, `90s`, `1h30m`, `500ms`): Go's form, as
//! Kubernetes objects write theirs. The operator's idle check and the activator read them.

use std::time::Duration;

/// The duration `text` names, or the words saying why it is none.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    // humantime reads more forms ("2 days", "1h 30m"); the spec takes Go's alone.
    let well_formed = text.starts_with(|c: char| c.is_ascii_digit())
        && text.ends_with(['h', 'm', 's'])
        && text.chars().all(|c| c.is_ascii_digit() || "hms".contains(c));
    let parsed = well_formed.then(|| humantime::parse_duration(text).ok()).flatten();
    parsed.ok_or_else(|| format!("{text:?} is not a duration such as 15m, 90s or 1h30m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations_are_read_and_anything_else_is_refused_in_words() {
        let secs = |s: u64| Ok(Duration::from_secs(s));
        assert_eq!(parse_duration("15m"), secs(900));
        assert_eq!(parse_duration("90s"), secs(90));
        assert_eq!(parse_duration("1h30m"), secs(5400));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "15", "m", "ten minutes", "1h 30m", "2days", "-5m", "1.5h"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains("is not a duration such as 15m"), "{bad:?}: {error}");
        }
    }
}
