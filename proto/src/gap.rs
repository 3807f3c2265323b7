//! Block ranges as the admin reads and types them: `17-19,40`. The receiver's gap report prints them and
//! `diode-send replay --blocks` parses them.

/// Collapse ascending block numbers into inclusive ranges.
pub fn ranges(blocks: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some((_, end)) if b == end.saturating_add(1) => *end = b,
            _ => out.push((b, b)),
        }
    }
    out
}

pub fn format(ranges: &[(u32, u32)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad block list {0:?}: expected numbers and ranges like 17-19,40")]
pub struct RangeError(String);

pub fn parse(text: &str) -> Result<Vec<(u32, u32)>, RangeError> {
    let err = || RangeError(text.to_string());
    text.split(',')
        .map(|part| {
            let part = part.trim();
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let a: u32 = a.trim().parse().map_err(|_| err())?;
            let b: u32 = b.trim().parse().map_err(|_| err())?;
            if a > b {
                return Err(err());
            }
            Ok((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = ranges([17, 18, 19, 40]);
        assert_eq!(format(&r), "17-19,40");
        assert_eq!(parse("17-19,40").unwrap(), r);
        assert!(parse("5-3").is_err());
        assert!(parse("x").is_err());
    }
}
