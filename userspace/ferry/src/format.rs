//! `ferry inspect --format`: the part of Docker's Go templates people use
//! with inspect, field paths like `{{.State.Pid}}` or
//! `{{.NetworkSettings.IPAddress}}`, filled from the JSON.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("unclosed {{{{ in format {0:?}")]
    Unclosed(String),
    #[error("unsupported template action {0:?}: only field paths like {{{{.State.Pid}}}}")]
    Unsupported(String),
    #[error("no field {0:?}")]
    NoField(String),
}

/// Fills every `{{.Path.To.Field}}` in `template` from `value`. Strings are
/// printed bare, other values as JSON.
pub fn render(template: &str, value: &Value) -> Result<String, FormatError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| FormatError::Unclosed(template.to_owned()))?;
        let action = after[..end].trim();
        let path = action
            .strip_prefix('.')
            .ok_or_else(|| FormatError::Unsupported(action.to_owned()))?;
        let mut field = value;
        if !path.is_empty() {
            for key in path.split('.') {
                field = field
                    .get(key)
                    .ok_or_else(|| FormatError::NoField(action.to_owned()))?;
            }
        }
        match field {
            Value::String(s) => out.push_str(s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({"State": {"Pid": 42, "Status": "running"}, "Name": "web", "Config": {"Cmd": ["sleep", "1"]}})
    }

    #[test]
    fn fills_field_paths() {
        assert_eq!(render("{{.State.Pid}}", &doc()), Ok("42".into()));
        assert_eq!(
            render("{{ .Name }} is {{.State.Status}}!", &doc()),
            Ok("web is running!".into())
        );
        assert_eq!(
            render("{{.Config.Cmd}}", &doc()),
            Ok(r#"["sleep","1"]"#.into())
        );
        assert_eq!(render("plain", &doc()), Ok("plain".into()));
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        assert_eq!(
            render("{{.State.Nope}}", &doc()),
            Err(FormatError::NoField(".State.Nope".into()))
        );
        assert!(matches!(
            render("{{json .}}", &doc()),
            Err(FormatError::Unsupported(_))
        ));
        assert!(matches!(
            render("{{.Name", &doc()),
            Err(FormatError::Unclosed(_))
        ));
    }
}
