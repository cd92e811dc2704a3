//! How a replay shows progress: a bar on a terminal, plain lines otherwise,
//! nothing, or the latest [`Advance`] for a caller that keeps the cursor (the
//! console). Apart from publishing, so [`run`](super::run()) only reports figures.

/// How progress is shown.
pub enum Progress {
    /// No output (tests, `--quiet`).
    Quiet,
    /// A progress bar (stderr is a terminal).
    Bar(indicatif::ProgressBar),
    /// A plain line per page on stderr.
    Lines,
    /// The latest [`Advance`], for a caller that keeps the cursor (the console
    /// stores it, so a replay stopped by a restart resumes where it stopped).
    Watch(tokio::sync::watch::Sender<Advance>),
}

/// Where a replay stands, after each confirmed page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advance {
    /// Rows published and confirmed so far.
    pub(crate) done: u64,
    /// Rows selected.
    pub(crate) total: i64,
    /// The first outbox id not yet confirmed: the `--from-id` to resume from.
    pub(crate) next_id: i64,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise.
    pub(crate) fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Progress::bar(indicatif::ProgressDrawTarget::stderr())
        } else {
            Progress::Lines
        }
    }

    /// A bar drawn to `target` showing count, rate and time left.
    pub(crate) fn bar(target: indicatif::ProgressDrawTarget) -> Self {
        let style = indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} events  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        Progress::Bar(indicatif::ProgressBar::with_draw_target(Some(0), target).with_style(style))
    }
    pub(super) fn start(&self, total: i64) {
        match self {
            Progress::Bar(b) => b.set_length(u64::try_from(total).unwrap_or(0)),
            Progress::Watch(w) => w.send_modify(|a| a.total = total),
            Progress::Quiet | Progress::Lines => {}
        }
    }
    pub(super) fn advance(&self, done: u64, total: i64, last_id: i64) {
        match self {
            Progress::Quiet => {}
            Progress::Bar(b) => b.set_position(done),
            Progress::Lines => eprintln!("replayed {done}/{total} (through outbox id {last_id})"),
            Progress::Watch(w) => {
                w.send_replace(Advance {
                    done,
                    total,
                    next_id: last_id + 1,
                });
            }
        }
    }
    /// Clears the bar, so that the summary printed next starts a line of its own
    /// (it states the count and rate the bar showed).
    pub(super) fn finish(&self) {
        if let Progress::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_rate_and_eta_and_is_cleared_at_the_end() {
        let term = indicatif::InMemoryTerm::new(4, 100);
        let p = Progress::bar(indicatif::ProgressDrawTarget::term_like(Box::new(
            term.clone(),
        )));
        p.start(1000);
        p.advance(250, 1000, 250);
        if let Progress::Bar(b) = &p {
            b.tick();
        }
        let shown = term.contents();
        assert!(shown.contains("250/1000 events"), "{shown:?}");
        assert!(shown.contains("/s") && shown.contains("ETA"), "{shown:?}");
        p.finish();
        assert!(
            term.contents().trim().is_empty(),
            "the summary line must not land on the bar: {:?}",
            term.contents()
        );
    }
}
