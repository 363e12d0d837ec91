//! HTTP Range requests (RFC 9110 section 14): parsing `Range: bytes=...` against a size.

/// Most ranges served in one multipart response; more is a client bug or an attack (each
/// range costs a part header), and the whole representation is served instead.
pub const MAX_RANGES: usize = 64;

/// What a `Range` header asks for, resolved against the representation's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: the whole representation (200).
    Full,
    /// Satisfiable ranges, each `[start, end]` inclusive, in the order asked (206).
    Ranges(Vec<(u64, u64)>),
    /// A well-formed header none of whose ranges overlaps the representation (416).
    Unsatisfiable,
}

/// Parses a `Range` value. Syntax errors, other units and too many ranges mean `Full`
/// (a server may ignore a Range header it does not understand).
pub fn parse(header: &str, size: u64) -> RangeRequest {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    let mut ranges = Vec::new();
    let mut count = 0usize;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return RangeRequest::Full;
        }
        let Some((first, last)) = part.split_once('-') else {
            return RangeRequest::Full;
        };
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            // Suffix: the last N bytes.
            let Ok(n) = last.parse::<u64>() else {
                return RangeRequest::Full;
            };
            if n == 0 || size == 0 {
                None
            } else {
                Some((size - n.min(size), size - 1))
            }
        } else {
            let Ok(start) = first.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match last.parse::<u64>() {
                    Ok(end) if end >= start => end,
                    _ => return RangeRequest::Full,
                }
            };
            (start < size).then(|| (start, end.min(size - 1)))
        };
        if let Some(range) = range {
            ranges.push(range);
        }
    }
    if count == 0 {
        return RangeRequest::Full;
    }
    if ranges.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Ranges(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn single_suffix_and_open_ranges() {
        assert_eq!(parse("bytes=0-99", 1000), Ranges(vec![(0, 99)]));
        assert_eq!(parse("bytes=900-", 1000), Ranges(vec![(900, 999)]));
        assert_eq!(parse("bytes=-100", 1000), Ranges(vec![(900, 999)]));
        assert_eq!(parse("bytes=-5000", 1000), Ranges(vec![(0, 999)]));
        assert_eq!(parse("bytes=990-5000", 1000), Ranges(vec![(990, 999)]));
    }

    #[test]
    fn several_ranges_keep_their_order() {
        assert_eq!(
            parse("bytes=500-599, 0-9,-1", 1000),
            Ranges(vec![(500, 599), (0, 9), (999, 999)])
        );
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(parse("bytes=1000-1001", 1000), Unsatisfiable);
        assert_eq!(parse("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse("bytes=5000-,0-1", 1000), Ranges(vec![(0, 1)]));
    }

    #[test]
    fn malformed_headers_are_ignored() {
        assert_eq!(parse("items=0-1", 1000), Full);
        assert_eq!(parse("bytes=9-1", 1000), Full);
        assert_eq!(parse("bytes=a-b", 1000), Full);
        assert_eq!(parse("bytes=", 1000), Full);
        let many = format!("bytes={}", vec!["0-1"; MAX_RANGES + 1].join(","));
        assert_eq!(parse(&many, 1000), Full);
    }
}
