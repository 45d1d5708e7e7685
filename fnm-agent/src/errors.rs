//! Errors as one line for an operator: each cause once.
//!
//! An error's message often already ends with its source's message (`cannot read x: No such
//! file`), and the source is still linked as the cause; printing the whole chain then says the
//! same thing twice. [`one_line`] joins the chain with `: `, leaving out a cause whose message the
//! line already holds.

/// The messages of `err` and its causes, each once, joined with `: `.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    join(std::iter::successors(Some(err), |e| e.source()).map(|e| e.to_string()))
}

/// [`one_line`] for an error that may borrow (not `'static`).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut messages = vec![err.to_string()];
    let mut cause = err.source();
    while let Some(c) = cause {
        messages.push(c.to_string());
        cause = c.source();
    }
    join(messages)
}

/// Joins messages with `: `, leaving out one the line already holds, and empty ones.
pub fn join(messages: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for message in messages {
        let message = message.trim();
        if message.is_empty() || line.contains(message) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(message);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /etc/fnm/fnm-agent.toml: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = Read {
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"),
        };
        assert_eq!(
            one_line(&e),
            "cannot read /etc/fnm/fnm-agent.toml: No such file"
        );
    }

    #[test]
    fn distinct_causes_are_joined() {
        assert_eq!(
            join(["starting".to_owned(), "".into(), "refused".into()]),
            "starting: refused"
        );
    }
}
