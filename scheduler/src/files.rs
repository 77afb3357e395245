//! The scheduler's file service (DESIGN.md §1, preload): serves job input files from one root
//! directory to producers, in pieces of at most [`INPUT_CHUNK_MAX`] bytes.
//!
//! Names are relative paths below the root. Absolute names, `..`, `.` and empty components are
//! refused, and so is any name whose real path (after following symlinks) leaves the root.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

pub use spate_netlib::proto::INPUT_CHUNK_MAX;

/// Longest input name accepted.
pub const MAX_NAME_LEN: usize = 4096;

/// Why an input cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The scheduler runs without a file service.
    #[error(
        "input \"{name}\": the scheduler has no file service; start it with `--files DIR` and put the file in DIR"
    )]
    NoService {
        /// The input name.
        name: String,
    },
    /// The name is not a plain relative path below the root.
    #[error("input \"{name}\": {reason}")]
    BadName {
        /// The input name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No such file below the root.
    #[error("input \"{name}\": no such file in the file service directory {root}")]
    NotFound {
        /// The input name.
        name: String,
        /// The root directory.
        root: PathBuf,
    },
    /// The name exists but is no regular file.
    #[error("input \"{name}\": not a regular file")]
    NotAFile {
        /// The input name.
        name: String,
    },
    /// Reading failed.
    #[error("input \"{name}\": {what}: {source}")]
    Io {
        /// The input name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// Serves files below a root directory.
#[derive(Debug, Clone)]
pub struct FileService {
    root: PathBuf,
}

impl FileService {
    /// A service for `root`, which must be an existing directory.
    pub fn new(root: &Path) -> Result<FileService, FileError> {
        let shown = root.display().to_string();
        let root = root.canonicalize().map_err(|source| FileError::Io {
            name: shown.clone(),
            what: "cannot open the file service directory",
            source,
        })?;
        if !root.is_dir() {
            return Err(FileError::Io {
                name: shown,
                what: "the file service root",
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(FileService { root })
    }

    /// The (canonical) root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks `name` and resolves it to a regular file below the root.
    pub fn resolve(&self, name: &str) -> Result<PathBuf, FileError> {
        check_name(name)?;
        let joined = self.root.join(name);
        let real = match joined.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FileError::NotFound {
                    name: name.to_string(),
                    root: self.root.clone(),
                });
            }
            Err(source) => {
                return Err(FileError::Io {
                    name: name.to_string(),
                    what: "cannot resolve",
                    source,
                });
            }
        };
        if !real.starts_with(&self.root) {
            return Err(FileError::BadName {
                name: name.to_string(),
                reason: "leads outside the file service directory (symlink)",
            });
        }
        if !real.is_file() {
            return Err(FileError::NotAFile {
                name: name.to_string(),
            });
        }
        Ok(real)
    }

    /// Size of input `name` in bytes.
    pub fn size(&self, name: &str) -> Result<u64, FileError> {
        let path = self.resolve(name)?;
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|source| FileError::Io {
                name: name.to_string(),
                what: "cannot stat",
                source,
            })
    }

    /// Reads up to `len` bytes of `name` from `offset` (fewer at the end of the file).
    pub fn read(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, FileError> {
        let path = self.resolve(name)?;
        let io_err = |what| {
            let name = name.to_string();
            move |source| FileError::Io { name, what, source }
        };
        let mut f = File::open(&path).map_err(io_err("cannot open"))?;
        let size = f.metadata().map_err(io_err("cannot stat"))?.len();
        let want = len.min(size.saturating_sub(offset));
        let mut data = Vec::with_capacity(want as usize);
        if want > 0 {
            f.seek(SeekFrom::Start(offset))
                .map_err(io_err("cannot seek"))?;
            f.take(want)
                .read_to_end(&mut data)
                .map_err(io_err("cannot read"))?;
        }
        Ok(data)
    }
}

/// A plain relative path: non-empty, no NUL, not absolute, only normal components.
pub fn check_name(name: &str) -> Result<(), FileError> {
    let bad = |reason| {
        Err(FileError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty name");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("name too long");
    }
    if name.contains('\0') {
        return bad("name contains a NUL byte");
    }
    let p = Path::new(name);
    if p.is_absolute() {
        return bad(
            "absolute paths are not served: name the file relative to the file service directory",
        );
    }
    for c in p.components() {
        match c {
            Component::Normal(_) => {}
            Component::ParentDir => return bad("`..` is not allowed in input names"),
            _ => return bad("only plain relative paths are served (no `.`, no root)"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spate-files-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn names_are_checked() {
        let reason = |n: &str| match check_name(n) {
            Err(FileError::BadName { reason, .. }) => reason,
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(reason("../x"), "`..` is not allowed in input names");
        assert_eq!(reason("a/../../x"), "`..` is not allowed in input names");
        assert!(reason("/etc/passwd").starts_with("absolute paths are not served"));
        assert_eq!(reason(""), "empty name");
        assert_eq!(reason("a\0b"), "name contains a NUL byte");
        assert!(reason("./a").starts_with("only plain relative paths"));
        check_name("a/b.tiff").unwrap();
        check_name("poster.tiff").unwrap();
    }

    #[test]
    fn serves_ranges_byte_exact() {
        let d = tmp("ranges");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(d.join("sub/in.bin"), &data).unwrap();
        let fs = FileService::new(&d).unwrap();
        assert_eq!(fs.size("sub/in.bin").unwrap(), 10_000);
        assert_eq!(fs.read("sub/in.bin", 0, 10_000).unwrap(), data);
        assert_eq!(fs.read("sub/in.bin", 9_990, 100).unwrap(), &data[9_990..]);
        assert_eq!(fs.read("sub/in.bin", 123, 7).unwrap(), &data[123..130]);
        assert!(fs.read("sub/in.bin", 20_000, 5).unwrap().is_empty());
        assert!(matches!(
            fs.size("nope.bin"),
            Err(FileError::NotFound { name, .. }) if name == "nope.bin"
        ));
        assert!(matches!(fs.size("sub"), Err(FileError::NotAFile { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let d = tmp("symlink");
        let outside = tmp("symlink-outside");
        std::fs::write(outside.join("secret"), b"no").unwrap();
        std::fs::create_dir_all(d.join("root")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), d.join("root/link")).unwrap();
        let fs = FileService::new(&d.join("root")).unwrap();
        assert!(matches!(
            fs.read("link", 0, 10),
            Err(FileError::BadName { reason, .. }) if reason.contains("outside")
        ));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&outside);
    }
}
