//! Permission patterns with placeholders (`{sub}`, `{client}`, `%c`, `%u`), as written in
//! tokens and ACL files, turned into the plain filters a [`Grants`](super::Grants) holds.

/// Substitutes placeholders with values in one pass over the pattern: a value is never
/// scanned again, so a client id spelled `%u` cannot stand in for the username, nor a
/// `sub` of `{client}` for anything else. A value that would change a filter's shape
/// (empty, holding `/`, `+`, `#` or NUL, or starting with `$`, which would move a grant
/// into the system topics) makes the pattern grant nothing.
pub fn substitute(pattern: &str, values: &[(&str, Option<&str>)]) -> Option<String> {
    let safe = |v: &str| !v.is_empty() && !v.starts_with('$') && !v.contains(['/', '+', '#', '\0']);
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while !rest.is_empty() {
        let found = values
            .iter()
            .find(|(placeholder, _)| rest.starts_with(placeholder));
        match found {
            Some((placeholder, value)) => {
                out.push_str(value.filter(|v| safe(v))?);
                rest = &rest[placeholder.len()..];
            }
            None => {
                let next = rest.chars().next()?;
                out.push(next);
                rest = &rest[next.len_utf8()..];
            }
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
        assert_eq!(sub(Some("$SYS")), None);
        assert_eq!(
            substitute("fixed", &[("{sub}", None)]).as_deref(),
            Some("fixed")
        );
    }

    #[test]
    fn a_substituted_value_is_never_read_as_a_placeholder() {
        let values = |c, u| [("%c", Some(c)), ("%u", u)];
        let acl = |p, c, u| substitute(p, &values(c, u));
        // The client id "x%u" stays "x%u": it does not become the username.
        assert_eq!(
            acl("d/%c/#", "x%u", Some("alice")).as_deref(),
            Some("d/x%u/#")
        );
        assert_eq!(acl("d/%c/#", "%u", None).as_deref(), Some("d/%u/#"));
        // Nor the other way round.
        assert_eq!(acl("u/%u/%c", "n1", Some("%c")).as_deref(), Some("u/%c/n1"));
        assert_eq!(acl("%c%u", "a", Some("b")).as_deref(), Some("ab"));
        assert_eq!(acl("u/%u", "n1", None), None);
        assert_eq!(acl("t/é/%c", "n1", None).as_deref(), Some("t/é/n1"));
    }
}
