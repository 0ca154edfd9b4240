//! Image names as Docker writes them: `nginx` is `docker.io/library/nginx:latest`.

use oci_spec::distribution::Reference;

use crate::ImageError;

/// The full form of a name: registry, repository and tag (`latest` when
/// none is given), or a digest.
pub fn normalize(name: &str) -> Result<String, ImageError> {
    let reference: Reference = name.parse().map_err(|e| ImageError::Reference {
        reference: name.to_owned(),
        reason: format!("{e}"),
    })?;
    Ok(reference.whole())
}

/// A normalized name as Docker prints it: `docker.io/library/` left out.
pub fn familiar(normalized: &str) -> &str {
    normalized
        .strip_prefix("docker.io/library/")
        .or_else(|| normalized.strip_prefix("docker.io/"))
        .unwrap_or(normalized)
}

/// Splits a normalized `repository:tag` (the tag is after the last colon
/// that follows the last slash: a registry's port is not a tag).
pub fn split_tag(normalized: &str) -> (&str, &str) {
    let slash = normalized.rfind('/').map_or(0, |i| i + 1);
    match normalized[slash..].rfind(':') {
        Some(i) => (&normalized[..slash + i], &normalized[slash + i + 1..]),
        None => (normalized, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize_as_docker_writes_them() {
        let n = |s: &str| normalize(s).expect(s);
        assert_eq!(n("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(n("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(n("me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(n("localhost:5000/app/web:v1"), "localhost:5000/app/web:v1");
        assert_eq!(familiar(&n("nginx")), "nginx:latest");
        assert_eq!(familiar(&n("me/app")), "me/app:latest");
        assert_eq!(familiar(&n("10.0.0.1:5000/x")), "10.0.0.1:5000/x:latest");
        assert_eq!(
            split_tag("localhost:5000/app:v1"),
            ("localhost:5000/app", "v1")
        );
        assert_eq!(split_tag("localhost:5000/app"), ("localhost:5000/app", ""));
        for bad in ["", "UPPER", "a b", "x:", "x@sha256:12"] {
            assert!(normalize(bad).is_err(), "{bad} accepted");
        }
    }
}
