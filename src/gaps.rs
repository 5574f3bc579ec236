//! `id_gap_check`: seeing the events a server did not send. When a stream's
//! ids are integers, each new id is compared with the one before it (across
//! reconnects, and after a restart against the checkpoint's id): a server
//! with a short replay buffer that resumes past what it lost shows up as a
//! gap, one that replays from an older id as a regression.
//!
//! Pure: no I/O, no clock. [`crate::stream`] feeds it every event's id and
//! logs and counts what it reports.

use serde::Deserialize;

/// What the ids of a stream are expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdGapCheck {
    /// Ids are not checked (the default).
    #[default]
    Off,
    /// Each id is the one before plus 1.
    Sequential,
    /// Each id is above the one before.
    Increasing,
}

impl IdGapCheck {
    pub fn name(self) -> &'static str {
        match self {
            IdGapCheck::Off => "off",
            IdGapCheck::Sequential => "sequential",
            IdGapCheck::Increasing => "increasing",
        }
    }
}

/// What one new id showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// As expected.
    InOrder,
    /// The id skipped ahead (sequential only): `missing` ids never came.
    Gap {
        expected: u64,
        received: u64,
        missing: u64,
    },
    /// The id is not above the one before.
    Regression { previous: u64, received: u64 },
    /// The id is not an integer; it is skipped.
    Unparsable,
}

/// The ids seen so far by one stream.
#[derive(Debug, Clone)]
pub struct IdChecker {
    mode: IdGapCheck,
    /// The last integer id checked.
    previous: Option<u64>,
    /// The text of the last id looked at: an event without an `id:` line
    /// carries the id before it, which is not a new id.
    last_seen: String,
}

impl IdChecker {
    /// A checker that resumes after `resume_id` (the checkpoint's or the
    /// configured initial id; empty for none).
    pub fn new(mode: IdGapCheck, resume_id: &str) -> IdChecker {
        IdChecker {
            mode,
            previous: parse(resume_id),
            last_seen: resume_id.to_owned(),
        }
    }

    pub fn mode(&self) -> IdGapCheck {
        self.mode
    }

    /// Looks at the id in effect for the next event; `None` when it is no
    /// new id (unchanged, or empty) or checking is off.
    pub fn check(&mut self, id: &str) -> Option<Finding> {
        if self.mode == IdGapCheck::Off || id.is_empty() || id == self.last_seen {
            return None;
        }
        self.last_seen.clear();
        self.last_seen.push_str(id);
        let Some(received) = parse(id) else {
            return Some(Finding::Unparsable);
        };
        let finding = match self.previous {
            None => Finding::InOrder,
            Some(previous) if received <= previous => Finding::Regression { previous, received },
            Some(previous) => match self.mode {
                IdGapCheck::Sequential if received > previous + 1 => Finding::Gap {
                    expected: previous + 1,
                    received,
                    missing: received - previous - 1,
                },
                _ => Finding::InOrder,
            },
        };
        debug_assert!(
            !matches!(finding, Finding::Gap { missing: 0, .. }),
            "a gap misses at least one id"
        );
        self.previous = Some(received);
        Some(finding)
    }
}

/// An id as an unsigned decimal integer: ASCII digits only, no sign, no
/// spaces, fitting in 64 bits.
fn parse(id: &str) -> Option<u64> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: IdGapCheck, resume: &str, ids: &[&str]) -> Vec<Option<Finding>> {
        let mut checker = IdChecker::new(mode, resume);
        ids.iter().map(|id| checker.check(id)).collect()
    }

    #[test]
    fn sequential_ids_report_gaps_with_their_size_and_regressions() {
        use Finding::*;
        let found = run(
            IdGapCheck::Sequential,
            "3",
            &["4", "4", "5", "11", "12", "9", "10", "", "x7", "11"],
        );
        assert_eq!(
            found,
            vec![
                Some(InOrder),
                None,
                Some(InOrder),
                Some(Gap {
                    expected: 6,
                    received: 11,
                    missing: 5
                }),
                Some(InOrder),
                Some(Regression {
                    previous: 12,
                    received: 9
                }),
                Some(InOrder),
                None,
                Some(Unparsable),
                Some(InOrder),
            ]
        );
    }

    #[test]
    fn the_resume_id_is_the_first_previous() {
        let found = run(IdGapCheck::Sequential, "10", &["15"]);
        assert_eq!(
            found,
            vec![Some(Finding::Gap {
                expected: 11,
                received: 15,
                missing: 4
            })]
        );
        assert_eq!(
            run(IdGapCheck::Sequential, "", &["15"]),
            vec![Some(Finding::InOrder)]
        );
        assert_eq!(
            run(IdGapCheck::Sequential, "abc", &["15"]),
            vec![Some(Finding::InOrder)]
        );
    }

    #[test]
    fn increasing_ids_may_skip_but_not_go_back_or_repeat() {
        use Finding::*;
        let found = run(
            IdGapCheck::Increasing,
            "",
            &["1", "5", "100", "100", "7", "7"],
        );
        assert_eq!(
            found,
            vec![
                Some(InOrder),
                Some(InOrder),
                Some(InOrder),
                None,
                Some(Regression {
                    previous: 100,
                    received: 7
                }),
                None,
            ]
        );
    }

    #[test]
    fn off_checks_nothing_and_ids_must_be_plain_digits() {
        assert_eq!(run(IdGapCheck::Off, "1", &["5", "x"]), vec![None, None]);
        for id in ["+5", "-5", " 5", "5 ", "1e3", "18446744073709551616"] {
            assert_eq!(parse(id), None, "{id}");
        }
        assert_eq!(parse("007"), Some(7));
        assert_eq!(parse("18446744073709551615"), Some(u64::MAX));
    }

    #[test]
    fn the_largest_id_cannot_overflow_the_expected_one() {
        let found = run(IdGapCheck::Sequential, &u64::MAX.to_string(), &["1"]);
        assert_eq!(
            found,
            vec![Some(Finding::Regression {
                previous: u64::MAX,
                received: 1
            })]
        );
    }
}
