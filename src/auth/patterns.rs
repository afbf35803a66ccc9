//! Permission patterns with placeholders (`{sub}`, `{client}`, `%c`, `%u`), as written in
//! tokens and ACL files, turned into the plain filters a [`Grants`](super::Grants) holds.

/// Substitutes `{name}` placeholders with values. A value that would change a filter's
/// shape (empty, or holding `/`, `+`, `#` or NUL) makes the pattern grant nothing.
pub fn substitute(pattern: &str, values: &[(&str, Option<&str>)]) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.contains(['/', '+', '#', '\0']);
    let mut out = pattern.to_owned();
    for (placeholder, value) in values {
        if out.contains(placeholder) {
            let value = value.filter(|v| safe(v))?;
            out = out.replace(placeholder, value);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_refuses_values_that_change_the_shape() {
        let sub = |v| substitute("u/{sub}/#", &[("{sub}", v)]);
        assert_eq!(sub(Some("alice")).as_deref(), Some("u/alice/#"));
        assert_eq!(sub(Some("a/b")), None);
        assert_eq!(sub(Some("+")), None);
        assert_eq!(sub(Some("")), None);
        assert_eq!(sub(None), None);
        assert_eq!(
            substitute("fixed", &[("{sub}", None)]).as_deref(),
            Some("fixed")
        );
    }
}
