//! Path templating: bounds the cardinality of `request` records by replacing
//! identifiers in paths (`/users/42/orders/7f3c…`) with a placeholder.

use std::fmt;
use std::sync::Arc;

/// A predicate on one path segment; a match replaces the segment with the placeholder.
pub type SegmentPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One rule deciding whether a path segment is an identifier.
#[derive(Clone)]
pub enum TemplateRule {
    /// Only ASCII digits (`42`).
    Numeric,
    /// A UUID in the 8-4-4-4-12 hex form (RFC 9562 §4), any case.
    Uuid,
    /// Hex digits only, at least `min_len` long (object ids, hashes).
    LongHex {
        /// Shortest segment that counts (shorter hex words such as `cafe` stay).
        min_len: usize,
    },
    /// Mixed letters and digits at least `min_len` long with at least one digit
    /// (opaque tokens such as `a8Xk29sLq0`).
    OpaqueToken {
        /// Shortest segment that counts.
        min_len: usize,
    },
    /// Any predicate the agent's configuration supplies.
    Custom(SegmentPredicate),
}

impl fmt::Debug for TemplateRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Numeric => f.write_str("Numeric"),
            Self::Uuid => f.write_str("Uuid"),
            Self::LongHex { min_len } => write!(f, "LongHex({min_len})"),
            Self::OpaqueToken { min_len } => write!(f, "OpaqueToken({min_len})"),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl TemplateRule {
    fn matches(&self, segment: &str) -> bool {
        match self {
            Self::Numeric => !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()),
            Self::Uuid => is_uuid(segment),
            Self::LongHex { min_len } => {
                segment.len() >= *min_len && segment.bytes().all(|b| b.is_ascii_hexdigit())
            }
            Self::OpaqueToken { min_len } => {
                segment.len() >= *min_len
                    && segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    && segment.bytes().any(|b| b.is_ascii_digit())
            }
            Self::Custom(predicate) => predicate(segment),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Replaces identifier segments of a path with a placeholder, by configurable rules.
///
/// The query (`?…`) and fragment are dropped: they are never part of the template.
#[derive(Debug, Clone)]
pub struct PathTemplater {
    rules: Vec<TemplateRule>,
    placeholder: String,
    max_segments: usize,
}

impl Default for PathTemplater {
    /// Numeric, UUID and hex of 16+ digits become `{id}`.
    fn default() -> Self {
        Self::new(
            vec![
                TemplateRule::Numeric,
                TemplateRule::Uuid,
                TemplateRule::LongHex { min_len: 16 },
            ],
            "{id}",
        )
    }
}

impl PathTemplater {
    /// A templater with these rules (tried in order) and placeholder.
    pub fn new(rules: Vec<TemplateRule>, placeholder: impl Into<String>) -> Self {
        Self {
            rules,
            placeholder: placeholder.into(),
            max_segments: 32,
        }
    }

    /// Segments past `max` are folded into one placeholder, so that paths of any
    /// depth map to a bounded set of templates.
    pub fn with_max_segments(mut self, max: usize) -> Self {
        self.max_segments = max.max(1);
        self
    }

    /// The template of `path` (origin-form target or `:path`).
    pub fn template(&self, path: &str) -> String {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let mut out = String::with_capacity(path.len());
        for (i, segment) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            if i > self.max_segments {
                out.push_str(&self.placeholder);
                break;
            }
            if self.rules.iter().any(|rule| rule.matches(segment)) {
                out.push_str(&self.placeholder);
            } else {
                out.push_str(segment);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules() {
        let t = PathTemplater::default();
        assert_eq!(t.template("/users/42/orders?page=2"), "/users/{id}/orders");
        assert_eq!(
            t.template("/o/123e4567-E89B-12d3-a456-426614174000/x"),
            "/o/{id}/x"
        );
        assert_eq!(t.template("/blob/0123456789abcdef0123"), "/blob/{id}");
        assert_eq!(t.template("/cafe/beef"), "/cafe/beef");
        assert_eq!(t.template("/"), "/");
        assert_eq!(t.template("*"), "*");
        assert_eq!(t.template("/pkg.Svc/Method"), "/pkg.Svc/Method");
        assert_eq!(t.template("/v1/items/"), "/v1/items/");
    }

    #[test]
    fn configurable_rules() {
        let t = PathTemplater::new(
            vec![
                TemplateRule::OpaqueToken { min_len: 8 },
                TemplateRule::Custom(Arc::new(|s: &str| s.starts_with('@'))),
            ],
            ":param",
        )
        .with_max_segments(3);
        assert_eq!(
            t.template("/u/@alice/tok/a8Xk29sLq0"),
            "/u/:param/tok/:param"
        );
        assert_eq!(t.template("/a/b/c/d/e/f"), "/a/b/c/:param");
        assert_eq!(t.template("/users/42"), "/users/42");
    }
}
