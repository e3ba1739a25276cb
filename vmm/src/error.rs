//! Errors as people read them. Every error type of the workspace says what failed, not why:
//! the cause is its `source()`, never repeated in its message. [`Chain`] prints an error with
//! its causes, once each, on one line: what `crashvmm: error:`, the log and the events that
//! carry an error's text show.

use std::error::Error;
use std::fmt;

/// An error and its causes, joined with ": " ("cannot create vmcore /x: No space left on
/// device (os error 28)").
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// [`Chain`] as a `String` (for an event's or a report's field).
pub fn chain(e: &dyn Error) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot write vmcore {0}")]
        Write(&'static str, #[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("flush failed")]
        Flush(#[from] std::io::Error),
    }

    #[test]
    fn every_cause_once_in_order() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let io_text = io.to_string();
        let e = Outer::Write("/c/vmcore", Inner::from(io));
        let line = chain(&e);
        assert_eq!(line, format!("cannot write vmcore /c/vmcore: flush failed: {io_text}"));
        assert_eq!(line.matches(&io_text).count(), 1);
        // An error without a cause is its message alone.
        assert_eq!(Chain(&Inner::Flush(std::io::Error::other("x"))).to_string(), "flush failed: x");
        assert_eq!(chain(&std::io::Error::other("just this")), "just this");
    }
}
