//! Human labels that point at content: repository names, release versions, file paths, and refs.

use std::fmt;
use std::str::FromStr;

use crate::BlobId;

/// Why a name, version, path or ref was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a repository slug.
    #[error(
        "invalid repository name `{0}`: use 1-64 characters of a-z, 0-9, `-`, `_` and `.`, starting and ending with a letter or digit"
    )]
    RepoName(String),
    /// Not `MAJOR.MINOR`.
    #[error(
        "invalid version `{0}`: use MAJOR.MINOR with decimal numbers and no leading zeros, e.g. `1.0`"
    )]
    Version(String),
    /// Not a safe relative path.
    #[error("invalid file path `{path}`: {why}")]
    FilePath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not a blob id nor `name[@version][/path]`.
    #[error(
        "invalid model ref `{0}`: use a CID (`bafkrei…`, `sha256:<hex>`) or `name`, `name@MAJOR.MINOR` or `name@MAJOR.MINOR/path`"
    )]
    Ref(String),
}

/// A repository name: a lower-case slug, unique in a hub.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct RepoName(String);

impl RepoName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let valid = (1..=64).contains(&s.len())
            && s.chars().all(|c| ok_char(c) || "-_.".contains(c))
            && s.starts_with(ok_char)
            && s.ends_with(ok_char)
            && !s.contains("..");
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::RepoName(s.chars().take(80).collect()))
        }
    }
}

/// A release version, `MAJOR.MINOR`, ordered numerically (`1.10` > `1.9`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible changes.
    pub major: u32,
    /// Compatible changes.
    pub minor: u32,
}

impl FromStr for Version {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || NameError::Version(s.chars().take(40).collect());
        let number = |part: &str| -> Result<u32, NameError> {
            let canonical = !part.is_empty()
                && part.len() <= 9
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'));
            if canonical {
                part.parse().map_err(|_| err())
            } else {
                Err(err())
            }
        };
        let (major, minor) = s.split_once('.').ok_or_else(err)?;
        Ok(Self {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A file's path inside a release: relative, `/`-separated, no `.`/`..`/empty segments.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct FilePath(String);

impl FilePath {
    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment, e.g. `model.onnx`.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl FromStr for FilePath {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |why| {
            Err(NameError::FilePath {
                path: s.chars().take(120).collect(),
                why,
            })
        };
        if s.is_empty() {
            return fail("it is empty");
        }
        if s.len() > 512 {
            return fail("it is longer than 512 bytes");
        }
        if s.starts_with('/') {
            return fail("absolute paths are not allowed");
        }
        if s.contains('\\') {
            return fail("use `/` as the separator, not `\\`");
        }
        if s.chars().any(char::is_control) {
            return fail("it contains control characters");
        }
        for seg in s.split('/') {
            match seg {
                "" => return fail("it has an empty segment"),
                "." | ".." => return fail("`.` and `..` segments are not allowed"),
                _ if seg.len() > 255 => return fail("a segment is longer than 255 bytes"),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }
}

/// What a client names when it asks for a model: an exact blob, or a label that resolves to one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    /// An exact blob.
    Blob(BlobId),
    /// `name[@version][/path]`: no version means the latest release; no path means the
    /// release's only file (or its only `.onnx` file).
    Named {
        /// The repository.
        repo: RepoName,
        /// The release, or `None` for the latest.
        version: Option<Version>,
        /// The file, or `None` for the release's main file.
        path: Option<FilePath>,
    },
}

impl FromStr for ModelRef {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("bafk") || s.starts_with("sha256:") {
            return s
                .parse()
                .map(Self::Blob)
                .map_err(|_| NameError::Ref(s.chars().take(80).collect()));
        }
        let (head, path) = match s.split_once('/') {
            Some((head, path)) => (head, Some(path.parse()?)),
            None => (s, None),
        };
        let (repo, version) = match head.split_once('@') {
            Some((_, "latest")) | None => (head.split('@').next().unwrap_or(head), None),
            Some((repo, version)) => (repo, Some(version.parse()?)),
        };
        Ok(Self::Named {
            repo: repo.parse()?,
            version,
            path,
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blob(id) => id.fmt(f),
            Self::Named {
                repo,
                version,
                path,
            } => {
                f.write_str(repo.as_str())?;
                if let Some(v) = version {
                    write!(f, "@{v}")?;
                }
                if let Some(p) = path {
                    write!(f, "/{}", p.as_str())?;
                }
                Ok(())
            }
        }
    }
}

macro_rules! string_like {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                String::schema()
            }
        }
        impl utoipa::ToSchema for $ty {}
    )*};
}
string_like!(RepoName, FilePath);

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Version {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("MAJOR.MINOR"))
            .examples(["1.0"])
            .into()
    }
}

impl utoipa::ToSchema for Version {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in ["a", "digits-mlp", "squeezenet_1.1", "x9"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "-a",
            "a-",
            "a/b",
            "a..b",
            "é",
            &"a".repeat(65),
            "a b",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_parse_and_order_numerically() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert_eq!(v("1.0"), Version { major: 1, minor: 0 });
        assert!(v("1.10") > v("1.9"));
        assert!(v("2.0") > v("1.99"));
        assert_eq!(v("0.12").to_string(), "0.12");
        for bad in [
            "1",
            "1.2.3",
            "01.0",
            "1.00",
            "a.b",
            "-1.0",
            "1.",
            ".1",
            "",
            "1234567890.0",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_reject_traversal_and_absolute() {
        for ok in ["model.onnx", "onnx/model.onnx", "a/b/c.d", "..hidden"] {
            assert!(ok.parse::<FilePath>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            ".",
            "..",
        ] {
            assert!(bad.parse::<FilePath>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "a/b/m.onnx".parse::<FilePath>().unwrap().file_name(),
            "m.onnx"
        );
    }

    #[test]
    fn refs() {
        let r = |s: &str| s.parse::<ModelRef>().unwrap();
        assert_eq!(
            r("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"),
            ModelRef::Blob(BlobId::of(b""))
        );
        assert_eq!(
            r("digits@1.2/onnx/model.onnx"),
            ModelRef::Named {
                repo: "digits".parse().unwrap(),
                version: Some("1.2".parse().unwrap()),
                path: Some("onnx/model.onnx".parse().unwrap()),
            }
        );
        assert_eq!(
            r("digits"),
            ModelRef::Named {
                repo: "digits".parse().unwrap(),
                version: None,
                path: None
            }
        );
        assert_eq!(r("digits@latest"), r("digits"));
        for s in ["digits@1.2/onnx/model.onnx", "digits", "digits@3.4"] {
            assert_eq!(r(s).to_string(), s);
        }
        for bad in [
            "digits@1",
            "Digits",
            "digits@1.0/../x",
            "bafkreiXX",
            "a@b@c",
        ] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad}");
        }
    }
}
