//! Progress bars for long work (index passes, pulls). Bars draw on stderr
//! when it is a terminal; otherwise a line is logged at start and end so that
//! logs of scripted runs still show what happened.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress bars on stderr (or none): one per long task.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars on stderr (if it is a terminal).
    pub(crate) fn stderr() -> Self {
        Progress {
            multi: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// No output at all (library use, tests).
    pub fn hidden() -> Self {
        Progress { multi: None }
    }

    /// A byte-count bar for one piece of work.
    pub(crate) fn bytes(&self, label: String, total: u64) -> ProgressBar {
        self.bar(
            label,
            total,
            "{prefix:>18} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}",
        )
    }

    /// A counting bar for work measured in `unit`s.
    pub(crate) fn items(&self, label: String, total: u64, unit: &'static str) -> ProgressBar {
        self.bar(
            label,
            total,
            &format!(
                "{{prefix:>18}} [{{bar:30}}] {{pos:>8}}/{{len:<8}} {unit} {{per_sec:>12}} {{msg}}"
            ),
        )
    }

    fn bar(&self, label: String, total: u64, template: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label);
        bar
    }
}
