//! Kubernetes quantities (`500m`, `4Gi`, `1e3`) as text the operator checks and reads.

/// Kubernetes' quantity grammar: a signed decimal number, then a binary-SI (Ki…Ei),
/// decimal-SI (n, u, m, k, M…E) or exponent (e3, E-2) suffix.
pub fn is_quantity(text: &str) -> bool {
    split(text).is_some()
}

/// The number and suffix of a quantity, if it is one.
fn split(text: &str) -> Option<(&str, &str)> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let digits = number.replace('.', "");
    let number_ok = !digits.is_empty() && number.matches('.').count() <= 1;
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        exponent => exponent
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())),
    };
    (number_ok && suffix_ok).then_some((number, suffix))
}

/// A quantity of bytes as a whole number, rounded up (`4Gi` is 4294967296, `1.5k` 1500);
/// `None` for text that is no quantity, a negative one, or one beyond 2^64.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    if text.starts_with('-') {
        return None;
    }
    let (number, suffix) = split(text)?;
    let (scale, exponent): (f64, i32) = match suffix {
        "" => (1.0, 0),
        "Ki" => (1024f64, 1),
        "Mi" => (1024f64, 2),
        "Gi" => (1024f64, 3),
        "Ti" => (1024f64, 4),
        "Pi" => (1024f64, 5),
        "Ei" => (1024f64, 6),
        "n" => (10f64, -9),
        "u" => (10f64, -6),
        "m" => (10f64, -3),
        "k" => (10f64, 3),
        "M" => (10f64, 6),
        "G" => (10f64, 9),
        "T" => (10f64, 12),
        "P" => (10f64, 15),
        "E" => (10f64, 18),
        exponent => (10f64, exponent[1..].parse().ok()?),
    };
    let value = number.parse::<f64>().ok()? * scale.powi(exponent);
    (value.is_finite() && value < u64::MAX as f64).then(|| value.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for ok in ["500m", "1", "0.5", "4Gi", "256Mi", "1e3", "+2", ".5", "12E-2", "2k"] {
            assert!(is_quantity(ok), "{ok} should be a quantity");
        }
        for bad in ["", "five", "1.2.3", "4GB", "Mi", "1e", "5 cores"] {
            assert!(!is_quantity(bad), "{bad} should not be a quantity");
        }
    }

    #[test]
    fn byte_quantities_are_whole_numbers() {
        assert_eq!(quantity_bytes("4Gi"), Some(4 * 1024 * 1024 * 1024));
        assert_eq!(quantity_bytes("100G"), Some(100_000_000_000));
        assert_eq!(quantity_bytes("1.5k"), Some(1500));
        assert_eq!(quantity_bytes("512"), Some(512));
        assert_eq!(quantity_bytes("1e3"), Some(1000));
        assert_eq!(quantity_bytes("100m"), Some(1), "rounded up");
        assert_eq!(quantity_bytes("-1Gi"), None);
        assert_eq!(quantity_bytes("lots"), None);
    }
}
