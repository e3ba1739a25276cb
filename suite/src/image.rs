//! The crash-test image of a kernel under test: `guest-images/crashtest-image.sh`, built into
//! this binary, run for the kernel (a Debian package it fetches, or a bzImage with its
//! modules), and its `image-info` read back.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::spec::{KernelSource, KernelSpec};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("kernel {kernel}: writing the image build's scripts to {}", .dir.display())]
    Scripts {
        kernel: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {kernel}: cannot run bash")]
    Spawn {
        kernel: String,
        #[source]
        source: std::io::Error,
    },
    /// The build's own one-line error (`images: error: ...`).
    #[error("kernel {kernel}: {message}")]
    Build { kernel: String, message: String },
    #[error("kernel {kernel}: {} is missing or unreadable after the build", .path.display())]
    Info { kernel: String, path: PathBuf },
}

/// Whether the kernel can do something the cases need, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum Capability {
    Yes,
    No(String),
    /// The build could not tell (no kernel config).
    Unknown,
}

/// A kernel's crash-test image.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    pub kernel: String,
    pub dir: PathBuf,
    pub release: String,
    /// The .deb or the bzImage it was made from.
    pub source: String,
    pub kexec: Capability,
    /// The crashtest module (oops, bug, warn, softlockup, hardlockup).
    pub module: Capability,
    pub hyperv: bool,
    pub pvpanic: bool,
}

impl Image {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio.gz")
    }
}

/// The directory of a kernel's image in the cache.
fn image_dir(cache: &Path, kernel: &KernelSpec) -> PathBuf {
    let key: String = match &kernel.source {
        KernelSource::Package(p) => format!("package-{p}"),
        KernelSource::Files { bzimage, .. } => {
            let stem = bzimage.display().to_string();
            format!("files-{}", stem.trim_start_matches('/'))
        }
    };
    let key: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() || "+-.".contains(c) { c } else { '_' }).collect();
    cache.join("suite-images").join(key)
}

/// Builds (or finds up to date) the image of `kernel` under `cache`, saying each progress line
/// of the build through `progress`.
pub fn build(kernel: &KernelSpec, cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<Image, ImageError> {
    let name = kernel.name.clone();
    let scripts = tempfile::Builder::new()
        .prefix("crashvmm-images-")
        .tempdir()
        .map_err(|source| ImageError::Scripts { kernel: name.clone(), dir: std::env::temp_dir(), source })?;
    write_scripts(scripts.path()).map_err(|source| ImageError::Scripts {
        kernel: name.clone(),
        dir: scripts.path().to_owned(),
        source,
    })?;
    let out = image_dir(cache, kernel);
    let mut cmd = Command::new("bash");
    cmd.arg(scripts.path().join("crashtest-image.sh")).arg("--out").arg(&out).arg("--cache").arg(cache);
    match &kernel.source {
        KernelSource::Package(p) => {
            cmd.arg("--package").arg(p);
        }
        KernelSource::Files { bzimage, modules, build_tree } => {
            cmd.arg("--kernel").arg(bzimage).arg("--modules").arg(modules);
            if let Some(t) = build_tree {
                cmd.arg("--build-tree").arg(t);
            }
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImageError::Spawn { kernel: name.clone(), source })?;
    let mut error = None;
    let mut last = String::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(e) = line.strip_prefix("images: error: ") {
                error = Some(e.to_string());
            } else if let Some(p) = line.strip_prefix("images: ") {
                progress(p);
            }
            if !line.trim().is_empty() {
                last = line;
            }
        }
    }
    let status = child.wait().map_err(|source| ImageError::Spawn { kernel: name.clone(), source })?;
    if !status.success() {
        let message = error.unwrap_or_else(|| format!("the image build failed ({status}): {last}"));
        return Err(ImageError::Build { kernel: name, message });
    }
    read_info(&name, &out)
}

/// Writes the embedded guest-images/ files under `dir`.
fn write_scripts(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, bytes) in embedded::FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        if rel.ends_with(".sh") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(())
}

/// `image-info`'s key=value lines.
fn read_info(kernel: &str, dir: &Path) -> Result<Image, ImageError> {
    let path = dir.join("image-info");
    let text =
        std::fs::read_to_string(&path).map_err(|_| ImageError::Info { kernel: kernel.into(), path: path.clone() })?;
    let map: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let release = map.get("kernel_release").filter(|r| !r.is_empty());
    let release = release.ok_or_else(|| ImageError::Info { kernel: kernel.into(), path: path.clone() })?;
    let capability = |key: &str| match map.get(key).copied() {
        Some("yes") => Capability::Yes,
        Some("no") => Capability::No(
            map.get(format!("{key}_reason").as_str()).map_or_else(|| format!("no {key}"), |r| r.to_string()),
        ),
        _ => Capability::Unknown,
    };
    Ok(Image {
        kernel: kernel.into(),
        dir: dir.to_owned(),
        release: release.to_string(),
        source: map.get("source").unwrap_or(&"").to_string(),
        kexec: capability("kexec"),
        module: capability("module"),
        hyperv: map.get("hyperv") == Some(&"yes"),
        pvpanic: map.get("pvpanic") == Some(&"yes"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_build_and_the_guest_side_are_built_in() {
        let names: Vec<&str> = embedded::FILES.iter().map(|(n, _)| *n).collect();
        for want in
            ["crashtest-image.sh", "debian.sh", "guest-init.sh", "scenarios/case.sh", "scenarios/kdump-capture.sh"]
        {
            assert!(names.contains(&want), "{want} not embedded: {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("testguest/")), "{names:?}");
        let dir = tempfile::tempdir().unwrap();
        write_scripts(dir.path()).unwrap();
        let case = std::fs::read(dir.path().join("scenarios/case.sh")).unwrap();
        assert_eq!(
            case,
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-images/scenarios/case.sh")).unwrap()
        );
    }

    #[test]
    fn image_info_says_what_the_kernel_lacks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("image-info"),
            "kernel_release=6.1.0-57-amd64\nsource=linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb\nkexec=yes\n\
             module=no\nmodule_reason=no kernel headers or build tree for 6.1.0-57-amd64\nhyperv=yes\npvpanic=yes\n",
        )
        .unwrap();
        let image = read_info("generic", dir.path()).unwrap();
        assert_eq!(image.release, "6.1.0-57-amd64");
        assert_eq!(image.kexec, Capability::Yes);
        assert_eq!(image.module, Capability::No("no kernel headers or build tree for 6.1.0-57-amd64".into()));
        assert!(image.hyperv && image.pvpanic);
        std::fs::write(dir.path().join("image-info"), "kexec=no\n").unwrap();
        assert!(matches!(read_info("k", dir.path()), Err(ImageError::Info { .. })));
    }

    #[test]
    fn each_kernel_has_its_own_image_directory() {
        let pkg = KernelSpec { name: "a".into(), source: KernelSource::Package("linux-image-amd64".into()) };
        let files = KernelSpec {
            name: "b".into(),
            source: KernelSource::Files {
                bzimage: "/boot/vmlinuz-6.1 x".into(),
                modules: "/lib/modules/6.1".into(),
                build_tree: None,
            },
        };
        let cache = Path::new("/c");
        assert_eq!(image_dir(cache, &pkg), Path::new("/c/suite-images/package-linux-image-amd64"));
        assert_eq!(image_dir(cache, &files), Path::new("/c/suite-images/files-boot_vmlinuz-6.1_x"));
    }
}
