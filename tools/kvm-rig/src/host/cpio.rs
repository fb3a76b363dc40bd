//! The initramfs as the kernel unpacks it: an uncompressed cpio archive in the "newc" format
//! (ASCII headers of thirteen 8-digit hexadecimal fields after the magic `070701`, names and
//! data padded to 4 bytes, a `TRAILER!!!` entry at the end).

use std::io::{self, Write};

/// One entry of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Its path, relative to the root.
        path: String,
    },
    /// A regular file.
    File {
        /// Its path.
        path: String,
        /// Its permission bits.
        mode: u32,
        /// Its contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Its path.
        path: String,
        /// Where it points.
        target: String,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn pad4(out: &mut impl Write, written: usize) -> io::Result<()> {
    out.write_all(&[0u8; 3][..(4 - written % 4) % 4])
}

fn header(out: &mut impl Write, inode: u32, mode: u32, size: usize, name: &str) -> io::Result<()> {
    let fields = [
        inode,
        mode,
        0, // uid
        0, // gid
        if mode & S_IFDIR == S_IFDIR { 2 } else { 1 },
        0, // mtime
        size as u32,
        0, // device major
        0, // device minor
        0, // rdev major
        0, // rdev minor
        name.len() as u32 + 1,
        0, // checksum
    ];
    let mut text = String::from("070701");
    for field in fields {
        text.push_str(&format!("{field:08X}"));
    }
    out.write_all(text.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, text.len() + name.len() + 1)
}

/// Writes `entries` as a newc archive. Parents must come before their children.
pub fn write(out: &mut impl Write, entries: &[Entry]) -> io::Result<()> {
    for (i, entry) in entries.iter().enumerate() {
        let inode = i as u32 + 1;
        let (path, mode, data): (&str, u32, &[u8]) = match entry {
            Entry::Dir { path } => (path, S_IFDIR | 0o755, &[]),
            Entry::File { path, mode, data } => (path, S_IFREG | (mode & 0o7777), data),
            Entry::Symlink { path, target } => (path, S_IFLNK | 0o777, target.as_bytes()),
        };
        header(out, inode, mode, data.len(), path)?;
        out.write_all(data)?;
        pad4(out, data.len())?;
    }
    header(out, 0, 0, 0, "TRAILER!!!")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_archive_ends_with_the_trailer() {
        let mut out = Vec::new();
        write(
            &mut out,
            &[
                Entry::Dir { path: "bin".into() },
                Entry::File {
                    path: "bin/x".into(),
                    mode: 0o755,
                    data: b"hello".to_vec(),
                },
                Entry::Symlink {
                    path: "bin/y".into(),
                    target: "x".into(),
                },
            ],
        )
        .unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // The directory: inode 1, mode 040755, no data, name "bin" (4 bytes with its NUL).
        assert_eq!(&out[6..14], b"00000001");
        assert_eq!(&out[14..22], b"000041ED");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("hello"));
        // The file's header says 5 bytes and mode 0100755.
        let file = text.find("bin/x").unwrap() - 110;
        assert_eq!(&text[file + 14..file + 22], "000081ED");
        assert_eq!(&text[file + 54..file + 62], "00000005");
        assert!(text.trim_end_matches('\0').ends_with("TRAILER!!!"));
    }
}
