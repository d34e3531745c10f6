//! Encryption at rest of the API keys stored in the catalog ("sealing"), under a master key kept
//! in a file outside the database.
//!
//! # What it protects against, and what it does not
//! A sealed key is useless without the master key file. So reading the catalog table (a role
//! granted `SELECT` on it by mistake, `pg_read_all_data`), a `pg_dump` of the database, a logical
//! replica or a copy of the table's data files shows nothing usable. It does not protect against
//! whoever can read the master key file too: a superuser (who can read server files with
//! `pg_read_binary_file` or run code as the server), the server's OS user, root, or a physical
//! backup (`pg_basebackup`, a file-system snapshot) of a data directory that holds the file. The
//! server has to be able to open the keys to call Bailian, so nothing stops those.
//!
//! The same split decides where sealed keys still open: a streaming replica or a restored physical
//! backup carries the file along and opens them; a database restored from `pg_dump` on another
//! cluster does not, until the file is copied over or the models are redeployed with their keys.
//!
//! Each sealed value is bound to a context, the model's name, as authenticated data: a sealed key
//! copied into another model's row does not open there, so a row cannot borrow another's key.
//!
//! # Why XChaCha20-Poly1305
//! Values are sealed by any backend at any time under one long-lived key, with no shared counter
//! to draw nonces from, so nonces are random. With the 96-bit nonces of ChaCha20-Poly1305 or
//! AES-GCM random nonces are only advised up to about 2^32 messages per key; XChaCha's 192-bit
//! nonces make a collision negligible for any number of values a cluster could seal.
//!
//! # Key file format
//! Text, written once and never overwritten: optional comment lines starting with `#` (the file
//! pg_bailian writes has one saying what the file is), then exactly one line of 64 hex digits,
//! the 32 key bytes. Blank lines and surrounding white space (also `\r`) are ignored; upper- or
//! lower-case hex is accepted. The file must be a regular file without group or world access
//! (`chmod 0600`, as PostgreSQL requires of its SSL key) and at most 4096 bytes; a symbolic link
//! to such a file is followed. Paths must be absolute: nothing is resolved against the cwd.
//!
//! It is created on first use in a race-safe way: the key is written to a temporary file created
//! with `O_EXCL` and mode 0600 in the same directory and fsynced, then hard-linked to the final
//! name. Linking fails when the name exists, so two backends creating it at once both end up with
//! the winner's complete file, and an existing file is never replaced.
//!
//! # Sealed format
//! `sealed:v1:<id>:<base64>`: the format version, the 8-hex-digit [`MasterKey::id`] of the key
//! that sealed it (to tell "another cluster's key" from "damaged"), then standard base64 (with
//! padding) of the 24-byte nonce, the ciphertext and the 16-byte tag. ASCII, safe in a `text`
//! column, never containing the plaintext.
//!
//! Error messages name paths and key ids, never key bytes, file contents or plaintexts.

use crate::error::AiError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::{AeadInPlace, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Hex digits of the key id: enough to tell clusters apart in a message; 32 bits of a hash of
/// the key tell nothing usable about the key.
const ID_LEN: usize = 8;

/// Every version of the sealed format starts with this, so a value of a later version is still
/// recognised as sealed (and reported as such) rather than taken for a plain API key.
const SEALED_PREFIX: &str = "sealed:";
const FORMAT_VERSION: &str = "v1";

/// Domain separation: the id hash and the authenticated data can never collide with any other
/// use of the same key or hash.
const ID_LABEL: &[u8] = b"pg_bailian master key id v1\0";
const AAD_LABEL: &[u8] = b"pg_bailian sealed api key v1\0";

const KEY_FILE_HEADER: &str = "# pg_bailian master key: it seals the API keys stored in the catalog. \
Keep it mode 0600 and back it up with the cluster; never replace it.";
/// A key file is one short line and a comment; anything larger is not one, so reading stops there.
const MAX_KEY_FILE: u64 = 4096;

const REDEPLOY: &str = "redeploy the model with its API key (ai_deploy_model(..., replace => true))";

/// The key bytes live on the heap so that moving a `MasterKey` leaves no copy behind on the stack.
type KeyBytes = Box<Zeroizing<[u8; KEY_LEN]>>;

/// The cluster's master key: 32 bytes from a file outside the database, zeroized on drop.
/// `Debug` shows only its id.
pub struct MasterKey {
    key: KeyBytes,
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// Loads the key file at `path` (absolute), creating it (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, AiError> {
        require_absolute(path)?;
        match read_key_file(path)? {
            Some(key) => Ok(key),
            None => create_key_file(path),
        }
    }

    /// Loads the key file at `path` (absolute); a missing file is an error.
    pub fn load(path: &Path) -> Result<MasterKey, AiError> {
        require_absolute(path)?;
        read_key_file(path)?.ok_or_else(|| missing_file(path))
    }

    /// Encrypts `plaintext`, binding it to `context` (authenticated, not encrypted).
    ///
    /// # Panics
    /// Only when the operating system cannot supply random bytes for the nonce, which Linux's
    /// `getrandom` never fails to do once the system has booted. [`MasterKey::try_seal`] reports
    /// it as an error instead.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        match self.try_seal(plaintext, context) {
            Ok(sealed) => sealed,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`MasterKey::seal`], with a failure of the random source as an error instead of a panic.
    pub fn try_seal(&self, plaintext: &str, context: &str) -> Result<String, AiError> {
        // One buffer holds nonce || plaintext, encrypted in place, then the tag: the plaintext is
        // copied exactly once, into memory that is zeroized when dropped.
        let mut buf = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN));
        buf.resize(NONCE_LEN, 0);
        fill_random(&mut buf[..])?;
        buf.extend_from_slice(plaintext.as_bytes());
        let (nonce, body) = buf.split_at_mut(NONCE_LEN);
        let tag = self
            .cipher()
            .encrypt_in_place_detached(XNonce::from_slice(nonce), &aad(context), body)
            .map_err(|_| AiError::Internal { message: "the value is too long to seal".into() })?;
        buf.extend_from_slice(&tag);
        Ok(format!("{SEALED_PREFIX}{FORMAT_VERSION}:{}:{}", self.id, BASE64.encode(&buf[..])))
    }

    /// Decrypts what `seal` produced with the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, AiError> {
        let parts = parse_sealed(sealed)?;
        if parts.key_id != self.id {
            return Err(wrong_master_key(parts.key_id, &self.id));
        }
        let mut buf = Zeroizing::new(BASE64.decode(parts.payload).map_err(|_| malformed_sealed())?);
        if buf.len() < NONCE_LEN + TAG_LEN {
            return Err(malformed_sealed());
        }
        let (nonce, rest) = buf.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        self.cipher()
            .decrypt_in_place_detached(XNonce::from_slice(nonce), &aad(context), body, Tag::from_slice(tag))
            .map_err(|_| not_authentic())?;
        // Only a value sealed from a &str authenticates, so this cannot fail in practice.
        let text = std::str::from_utf8(body).map_err(|_| not_authentic())?;
        Ok(text.to_owned())
    }

    /// A short, stable, non-secret fingerprint of the key: the first 8 hex digits of SHA-256 over
    /// a label and the key. It is part of every sealed value, so it must never change.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    fn from_bytes(key: KeyBytes) -> MasterKey {
        let id = key_id(&key[..]);
        MasterKey { key, id }
    }

    fn generate() -> Result<MasterKey, AiError> {
        let mut key: KeyBytes = Box::new(Zeroizing::new([0; KEY_LEN]));
        fill_random(&mut key[..])?;
        Ok(MasterKey::from_bytes(key))
    }

    /// The cipher holds its own copy of the key and zeroizes it on drop; building it per call
    /// costs nothing next to a network request and keeps one copy of the key alive, not two.
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.key[..]))
    }

    /// The key file's text, in memory that is zeroized when dropped.
    fn file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(KEY_FILE_HEADER.len() + 2 * KEY_LEN + 2));
        text.push_str(KEY_FILE_HEADER);
        text.push('\n');
        push_hex(&self.key[..], &mut text);
        text.push('\n');
        text
    }
}

/// Whether `stored` is the output of [`MasterKey::seal`] (of any format version): a prefix check,
/// so that callers never mistake a sealed value for a plain API key.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// The id of the master key that sealed `stored`, when it is a well-formed sealed value of a
/// known format: to list which stored keys another cluster's master key sealed.
pub fn sealed_key_id(stored: &str) -> Option<&str> {
    parse_sealed(stored).ok().map(|parts| parts.key_id)
}

// ---------------------------------------------------------------------------------------------
// Sealed values

struct SealedParts<'a> {
    key_id: &'a str,
    payload: &'a str,
}

fn parse_sealed(stored: &str) -> Result<SealedParts<'_>, AiError> {
    let rest = stored.strip_prefix(SEALED_PREFIX).ok_or_else(not_sealed)?;
    let (version, rest) = rest.split_once(':').ok_or_else(malformed_sealed)?;
    if version != FORMAT_VERSION {
        return Err(unsupported_version(version));
    }
    let (key_id, payload) = rest.split_once(':').ok_or_else(malformed_sealed)?;
    if !is_key_id(key_id) {
        return Err(malformed_sealed());
    }
    Ok(SealedParts { key_id, payload })
}

fn is_key_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn aad(context: &str) -> Vec<u8> {
    // The label has a fixed length, so label || context is unambiguous.
    [AAD_LABEL, context.as_bytes()].concat()
}

fn key_id(key: &[u8]) -> String {
    let digest = Sha256::new().chain_update(ID_LABEL).chain_update(key).finalize();
    let mut id = String::with_capacity(ID_LEN);
    push_hex(&digest[..ID_LEN / 2], &mut id);
    id
}

// ---------------------------------------------------------------------------------------------
// The key file

/// The key at `path`, or `None` when there is no file there.
fn read_key_file(path: &Path) -> Result<Option<MasterKey>, AiError> {
    // O_NONBLOCK so that a FIFO put at the path is refused below instead of hanging the backend.
    let file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(path, &e)),
    };
    // Checked on the open file, so the file checked is the file read.
    check_file_safety(&file, path)?;
    let content = read_limited(file, path)?;
    parse_key_file(&content).map(Some).ok_or_else(|| invalid_content(path))
}

fn check_file_safety(file: &File, path: &Path) -> Result<(), AiError> {
    let meta = file.metadata().map_err(|e| unreadable(path, &e))?;
    if !meta.file_type().is_file() {
        return Err(not_regular(path));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(too_open(path));
    }
    Ok(())
}

fn read_limited(file: File, path: &Path) -> Result<Zeroizing<Vec<u8>>, AiError> {
    // Allocated up front so reading never reallocates and leaves an unzeroized copy behind.
    let mut content = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut content).map_err(|e| unreadable(path, &e))?;
    if content.len() as u64 > MAX_KEY_FILE {
        return Err(invalid_content(path));
    }
    Ok(content)
}

/// The key in a key file's content (see the module doc), or `None` when it holds no valid key.
fn parse_key_file(content: &[u8]) -> Option<MasterKey> {
    let text = std::str::from_utf8(content).ok()?;
    let mut keys = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
    let hex = keys.next()?;
    if keys.next().is_some() {
        return None;
    }
    decode_key_hex(hex).map(MasterKey::from_bytes)
}

fn decode_key_hex(hex: &str) -> Option<KeyBytes> {
    if hex.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key: KeyBytes = Box::new(Zeroizing::new([0; KEY_LEN]));
    for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(key)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn push_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Creates the key file with a new key, or, when another process created it first, loads that.
fn create_key_file(path: &Path) -> Result<MasterKey, AiError> {
    let (dir, name) = split_path(path)?;
    let key = MasterKey::generate()?;
    let temp = write_temp_file(dir, name, &key.file_text(), path)?;
    let linked = link_no_replace(&temp.path, path)?;
    // Removed before the directory is synced, so that the removal is durable too.
    drop(temp);
    if !linked {
        // Lost the race: the winner's file is complete (it was synced before being linked).
        return MasterKey::load(path);
    }
    sync_dir(dir).map_err(|e| not_creatable(path, &e))?;
    Ok(key)
}

fn split_path(path: &Path) -> Result<(&Path, &str), AiError> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(not_a_file_path(path)),
    }
}

/// A temporary file removed when dropped. Only made once the file was created by us, so a file
/// of the same name that someone else made is never removed.
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort: a leftover temporary is a key that nothing uses, inside a 0600 file.
        let _ = fs::remove_file(&self.path);
    }
}

fn write_temp_file(dir: &Path, name: &str, text: &str, path: &Path) -> Result<TempFile, AiError> {
    let mut suffix = [0u8; 8];
    fill_random(&mut suffix)?;
    let mut temp_name = format!(".{name}.{}.", std::process::id());
    push_hex(&suffix, &mut temp_name);
    temp_name.push_str(".tmp");
    let temp_path = dir.join(temp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true) // O_EXCL
        .mode(0o600)
        .open(&temp_path)
        .map_err(|e| not_creatable(path, &e))?;
    let temp = TempFile { path: temp_path };
    file.write_all(text.as_bytes()).map_err(|e| not_creatable(path, &e))?;
    file.sync_all().map_err(|e| not_creatable(path, &e))?;
    Ok(temp)
}

/// Links `temp` to `path`: `true` when linked, `false` when `path` already exists.
fn link_no_replace(temp: &Path, path: &Path) -> Result<bool, AiError> {
    match fs::hard_link(temp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(not_creatable(path, &e)),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn require_absolute(path: &Path) -> Result<(), AiError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(master_key_error(
            format!("master key file path \"{}\" is not absolute", path.display()),
            "Give an absolute path: pg_bailian resolves nothing against the server's working directory.",
        ))
    }
}

fn fill_random(dest: &mut [u8]) -> Result<(), AiError> {
    OsRng.try_fill_bytes(dest).map_err(|e| {
        master_key_error(
            format!("could not get random bytes from the operating system: {e}"),
            "Check the server's random source (getrandom, /dev/urandom).",
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Errors: paths and key ids only, never key bytes, file contents or plaintexts.

fn master_key_error(message: String, hint: impl Into<String>) -> AiError {
    AiError::MasterKey { message, hint: hint.into() }
}

fn missing_file(path: &Path) -> AiError {
    master_key_error(
        format!("master key file \"{}\" does not exist", path.display()),
        "The stored API keys were sealed on another cluster, or the file was removed: restore the \
         file (mode 0600) from the cluster that sealed them, or redeploy each model with its API key \
         (ai_deploy_model(..., replace => true)).",
    )
}

fn unreadable(path: &Path, e: &io::Error) -> AiError {
    master_key_error(
        format!("could not read master key file \"{}\": {e}", path.display()),
        "The file and its directory must be accessible to the database server's OS user.",
    )
}

fn not_regular(path: &Path) -> AiError {
    master_key_error(
        format!("master key file \"{}\" is not a regular file", path.display()),
        "The master key must be a regular file of mode 0600 holding one line of 64 hex digits.",
    )
}

fn too_open(path: &Path) -> AiError {
    master_key_error(
        format!("master key file \"{}\" has group or world access", path.display()),
        format!(
            "The file must be readable and writable by its owner only: chmod 0600 \"{}\".",
            path.display()
        ),
    )
}

fn invalid_content(path: &Path) -> AiError {
    master_key_error(
        format!("master key file \"{}\" does not hold a valid master key", path.display()),
        "The file must hold one line of 64 hex digits (lines starting with '#' are comments). \
         Restore it from a backup rather than replacing it: API keys sealed with it open only with it.",
    )
}

fn not_creatable(path: &Path, e: &io::Error) -> AiError {
    master_key_error(
        format!("could not create master key file \"{}\": {e}", path.display()),
        "The directory must exist and be writable by the database server's OS user.",
    )
}

fn not_a_file_path(path: &Path) -> AiError {
    master_key_error(
        format!("master key file path \"{}\" does not name a file", path.display()),
        "Give the absolute path of a file, for example in the data directory.",
    )
}

fn not_sealed() -> AiError {
    master_key_error(
        "stored API key is not a sealed value".into(),
        format!("Sealed values start with \"{SEALED_PREFIX}\"; {REDEPLOY}."),
    )
}

fn unsupported_version(version: &str) -> AiError {
    // Echoed only when it looks like a version, so that a damaged value is never repeated.
    let plausible = version.len() <= 4
        && version.starts_with('v')
        && version.len() > 1
        && version[1..].bytes().all(|b| b.is_ascii_digit());
    if !plausible {
        return malformed_sealed();
    }
    master_key_error(
        format!(
            "stored API key is sealed in format {version}; this version of pg_bailian reads only {FORMAT_VERSION}"
        ),
        format!("Use the version of pg_bailian that sealed it, or {REDEPLOY}."),
    )
}

fn malformed_sealed() -> AiError {
    master_key_error(
        "stored API key is damaged: it is not a well-formed sealed value".into(),
        format!("The value was altered; {REDEPLOY}."),
    )
}

fn not_authentic() -> AiError {
    master_key_error(
        "stored API key cannot be opened: the value is damaged or belongs to another model".into(),
        format!("A sealed key opens only for the model it was deployed with; {REDEPLOY}."),
    )
}

fn wrong_master_key(sealed_with: &str, ours: &str) -> AiError {
    master_key_error(
        format!(
            "stored API key was sealed with master key {sealed_with}; this server's master key is {ours}"
        ),
        format!("Copy the master key file (mode 0600) from the cluster that sealed it, or {REDEPLOY}."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Barrier};

    const PLAIN: &str = "sk-0123456789abcdef0123456789abcdef";
    const ZERO_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    /// The id of the all-zero key, computed independently (Python's hashlib).
    const PINNED_ZERO_KEY_ID: &str = "b3afc5c4";

    #[test]
    fn a_pinned_v1_value_still_opens() {
        // Sealed once with the all-zero key and checked against an independent XChaCha20-Poly1305
        // (HChaCha20 + Python's ChaCha20Poly1305): values already stored must keep opening.
        const SEALED: &str =
            "sealed:v1:b3afc5c4:93ruXl095USspgdCT0OfUVCn5Aq42P+jnp2KuaP7f0aH1du5Dchp0NROVIb65t/\
                              sDtq7OeYn4ERYjFFdEopIUaWep68SHHQztFA/";
        let k = key_from_hex(ZERO_KEY);
        assert_eq!(k.open(SEALED, "chat").expect("opens"), PLAIN);
        assert!(k.open(SEALED, "embedder").is_err());
    }

    /// A fresh directory under the system temp dir, removed with everything in it on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> TestDir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("pg_bailian_keystore_{tag}_{}_{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create test dir");
            assert!(dir.is_absolute());
            TestDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        fn entries(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("read test dir")
                .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn key() -> MasterKey {
        MasterKey::generate().expect("random key")
    }

    fn key_from_hex(hex: &str) -> MasterKey {
        MasterKey::from_bytes(decode_key_hex(hex).expect("valid hex"))
    }

    fn write_file(path: &Path, content: &str, mode: u32) {
        fs::write(path, content).expect("write file");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn message_and_hint(e: &AiError) -> (String, String) {
        match e {
            AiError::MasterKey { message, hint } => (message.clone(), hint.clone()),
            other => panic!("expected a MasterKey error, got {other:?}"),
        }
    }

    /// The error is a MasterKey error (SQLSTATE ZBK02) whose text holds none of `secrets`.
    fn assert_clean(e: &AiError, secrets: &[&str]) -> String {
        let (message, hint) = message_and_hint(e);
        assert_eq!(e.sqlstate(), "ZBK02");
        for secret in secrets {
            assert!(!message.contains(secret) && !hint.contains(secret), "leaked {secret:?} in {e:?}");
        }
        message
    }

    #[test]
    fn round_trip() {
        let k = key();
        for plain in ["", PLAIN, "sk-ünïcødé-键", &"x".repeat(256)] {
            let sealed = k.seal(plain, "chat");
            assert!(sealed.is_ascii());
            assert!(plain.is_empty() || !sealed.contains(plain));
            assert_eq!(k.open(&sealed, "chat").expect("opens"), plain);
        }
    }

    #[test]
    fn sealed_format_is_versioned_and_names_the_key() {
        let k = key();
        let sealed = k.seal(PLAIN, "chat");
        let rest = sealed.strip_prefix(&format!("sealed:v1:{}:", k.id())).expect("prefix and id");
        let raw = BASE64.decode(rest).expect("base64");
        assert_eq!(raw.len(), NONCE_LEN + PLAIN.len() + TAG_LEN);
        assert!(sealed.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(sealed_key_id(&sealed), Some(k.id().as_str()));
        // A random nonce per seal: the same key sealed twice looks different.
        assert_ne!(sealed, k.seal(PLAIN, "chat"));
    }

    #[test]
    fn different_context_fails() {
        let k = key();
        let sealed = k.seal(PLAIN, "chat");
        for other in ["embedder", "chat ", "Chat", ""] {
            let e = k.open(&sealed, other).expect_err("other context");
            let message = assert_clean(&e, &[PLAIN, &sealed[20..]]);
            assert!(message.contains("damaged or belongs to another model"), "{message}");
        }
    }

    #[test]
    fn different_key_fails_naming_both_ids() {
        let (a, b) = (key(), key());
        assert_ne!(a.id(), b.id());
        let e = b.open(&a.seal(PLAIN, "chat"), "chat").expect_err("other master key");
        let message = assert_clean(&e, &[PLAIN]);
        assert_eq!(
            message,
            format!(
                "stored API key was sealed with master key {}; this server's master key is {}",
                a.id(),
                b.id()
            )
        );
        let (_, hint) = message_and_hint(&e);
        assert!(hint.contains("Copy the master key file") && hint.contains("redeploy"), "{hint}");
    }

    #[test]
    fn tampering_any_byte_fails() {
        let k = key();
        let sealed = k.seal(PLAIN, "chat");
        for i in 0..sealed.len() {
            for replacement in [b'A', b'a', b'0', b'/', b'+', b'=', b':', b'z'] {
                let mut bytes = sealed.clone().into_bytes();
                if bytes[i] == replacement {
                    continue;
                }
                bytes[i] = replacement;
                let tampered = String::from_utf8(bytes).expect("ascii");
                let e = k.open(&tampered, "chat").expect_err("tampered value must not open");
                assert_clean(&e, &[PLAIN]);
            }
        }
    }

    #[test]
    fn truncated_and_extended_values_fail() {
        let k = key();
        let sealed = k.seal(PLAIN, "chat");
        for len in 0..sealed.len() {
            assert!(k.open(&sealed[..len], "chat").is_err(), "truncated to {len}");
        }
        for extra in ["A", "AAAA", "=", ":", " ", "\n"] {
            assert!(k.open(&format!("{sealed}{extra}"), "chat").is_err(), "extended by {extra:?}");
        }
    }

    #[test]
    fn errors_for_malformed_values_say_what_is_wrong() {
        let k = key();
        let id = k.id();
        let message = |s: &str| message_and_hint(&k.open(s, "chat").expect_err(s)).0;
        assert_eq!(message(PLAIN), "stored API key is not a sealed value");
        assert_eq!(
            message(&format!("sealed:v2:{id}:AAAA")),
            "stored API key is sealed in format v2; this version of pg_bailian reads only v1"
        );
        // A version field that is not a version is not repeated.
        let odd = message("sealed:sk-secretvalue:AAAA");
        assert!(odd.contains("not a well-formed sealed value") && !odd.contains("secret"), "{odd}");
        assert!(message("sealed:v1:XYZ:AAAA").contains("not a well-formed"));
        assert!(message(&format!("sealed:v1:{id}:%%%")).contains("not a well-formed"));
        assert!(
            message(&format!("sealed:v1:{id}:{}", BASE64.encode([0u8; 39]))).contains("not a well-formed")
        );
        assert!(
            message(&format!("sealed:v1:{id}:{}", BASE64.encode([0u8; 40]))).contains("damaged or belongs")
        );
    }

    proptest! {
        #[test]
        fn garbage_never_opens_nor_panics(s in ".{0,200}") {
            let k = key_from_hex(ZERO_KEY);
            prop_assert!(k.open(&s, "chat").is_err());
        }

        #[test]
        fn random_payloads_under_the_right_id_never_open(bytes in prop::collection::vec(any::<u8>(), 0..120)) {
            let k = key_from_hex(ZERO_KEY);
            let s = format!("sealed:v1:{}:{}", k.id(), BASE64.encode(&bytes));
            prop_assert!(k.open(&s, "chat").is_err());
        }

        #[test]
        fn any_plaintext_and_context_round_trip(plain in ".{0,300}", context in ".{0,64}") {
            let k = key_from_hex(ZERO_KEY);
            prop_assert_eq!(k.open(&k.seal(&plain, &context), &context).expect("opens"), plain);
        }
    }

    #[test]
    fn is_sealed_is_a_prefix_check() {
        let k = key();
        assert!(is_sealed(&k.seal(PLAIN, "chat")));
        assert!(is_sealed("sealed:v2:whatever")); // later formats are still not plain keys
        for plain in [PLAIN, "env:DASHSCOPE_API_KEY", "file:/etc/key", "", "sealed", "Sealed:v1:"] {
            assert!(!is_sealed(plain), "{plain}");
        }
        assert_eq!(sealed_key_id(PLAIN), None);
    }

    #[test]
    fn id_is_stable_short_hex() {
        // Pinned: the id is part of every sealed value, so changing how it is computed would make
        // every stored key look sealed by another cluster.
        assert_eq!(key_from_hex(ZERO_KEY).id(), PINNED_ZERO_KEY_ID);
        let k = key();
        assert!(is_key_id(&k.id()));
        assert_eq!(format!("{k:?}"), format!("MasterKey {{ id: {:?} }}", k.id()));
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = TestDir::new("create");
        let path = dir.path("pg_bailian_master.key");
        let created = MasterKey::load_or_create(&path).expect("created");
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("# pg_bailian master key"));
        assert!(lines[1].len() == 64 && lines[1].bytes().all(|b| b.is_ascii_hexdigit()));
        // No temporary is left behind.
        assert_eq!(dir.entries(), vec!["pg_bailian_master.key".to_string()]);

        let sealed = created.seal(PLAIN, "chat");
        for again in [MasterKey::load_or_create(&path), MasterKey::load(&path)] {
            let again = again.expect("loaded");
            assert_eq!(again.id(), created.id());
            assert_eq!(again.open(&sealed, "chat").expect("opens"), PLAIN);
        }
        assert_eq!(fs::read_to_string(&path).expect("read"), text, "never rewritten");
    }

    #[test]
    fn key_file_variants_are_accepted() {
        let dir = TestDir::new("variants");
        let expected = key_from_hex(ZERO_KEY).id();
        let upper = "AB".repeat(32);
        for (i, content) in [
            ZERO_KEY.to_string(),
            format!("{ZERO_KEY}\n"),
            format!("# a comment\n\n  {ZERO_KEY}  \r\n\n# another\n"),
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path(&format!("k{i}"));
            write_file(&path, content, 0o600);
            assert_eq!(MasterKey::load(&path).expect("valid").id(), expected);
        }
        let path = dir.path("upper");
        write_file(&path, &upper, 0o400);
        assert_eq!(MasterKey::load(&path).expect("valid").id(), key_from_hex(&"ab".repeat(32)).id());
    }

    #[test]
    fn load_of_a_missing_file_errs_with_a_hint() {
        let dir = TestDir::new("missing");
        let path = dir.path("absent.key");
        let e = MasterKey::load(&path).expect_err("missing");
        let (message, hint) = message_and_hint(&e);
        assert_eq!(message, format!("master key file \"{}\" does not exist", path.display()));
        assert!(hint.contains("another cluster") && hint.contains("restore") && hint.contains("redeploy"));
        assert!(!path.exists(), "load never creates");
    }

    #[test]
    fn group_or_world_accessible_file_is_refused() {
        let dir = TestDir::new("perms");
        let path = dir.path("master.key");
        for mode in [0o640, 0o604, 0o660, 0o644, 0o602, 0o620] {
            write_file(&path, ZERO_KEY, mode);
            for result in [MasterKey::load(&path), MasterKey::load_or_create(&path)] {
                let e = result.expect_err("too open");
                let message = assert_clean(&e, &[ZERO_KEY]);
                assert_eq!(
                    message,
                    format!("master key file \"{}\" has group or world access", path.display())
                );
                assert!(message_and_hint(&e).1.contains("chmod 0600"));
            }
            assert_eq!(fs::read_to_string(&path).expect("read"), ZERO_KEY, "never overwritten");
        }
    }

    #[test]
    fn invalid_content_is_refused_without_repeating_it() {
        let dir = TestDir::new("invalid");
        let path = dir.path("master.key");
        let too_long = format!("# {}\n{ZERO_KEY}\n", "c".repeat(5000));
        for content in [
            "",
            "# only a comment\n",
            "sk-secretvalue0123456789",
            &ZERO_KEY[..63],
            &format!("{ZERO_KEY}0"),
            &format!("{ZERO_KEY}\n{ZERO_KEY}\n"),
            &format!("g{}", &ZERO_KEY[1..]),
            too_long.as_str(),
        ] {
            fs::write(&path, content).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            let e = MasterKey::load_or_create(&path).expect_err("invalid content");
            let message = assert_clean(&e, &["secretvalue", ZERO_KEY, "0000000000"]);
            assert_eq!(
                message,
                format!("master key file \"{}\" does not hold a valid master key", path.display())
            );
            assert_eq!(fs::read_to_string(&path).expect("read"), content, "never overwritten");
        }
        fs::write(&path, [0xffu8, 0xfe, 0x00]).expect("write");
        assert!(MasterKey::load(&path).is_err());
    }

    #[test]
    fn a_directory_is_not_a_key_file() {
        let dir = TestDir::new("notfile");
        let path = dir.path("master.key");
        fs::create_dir(&path).expect("mkdir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod");
        for result in [MasterKey::load(&path), MasterKey::load_or_create(&path)] {
            let message = message_and_hint(&result.expect_err("directory")).0;
            assert_eq!(message, format!("master key file \"{}\" is not a regular file", path.display()));
        }
    }

    #[test]
    fn relative_paths_are_refused() {
        for relative in ["master.key", "./master.key", "pg_bailian/master.key", ""] {
            for result in
                [MasterKey::load(Path::new(relative)), MasterKey::load_or_create(Path::new(relative))]
            {
                let message = message_and_hint(&result.expect_err("relative")).0;
                assert_eq!(message, format!("master key file path \"{relative}\" is not absolute"));
            }
        }
        assert!(!Path::new("master.key").exists(), "nothing created in the cwd");
        let message = message_and_hint(&MasterKey::load_or_create(Path::new("/")).expect_err("root")).0;
        assert!(
            message.contains("does not name a file") || message.contains("not a regular file"),
            "{message}"
        );
    }

    #[test]
    fn missing_directory_is_reported() {
        let dir = TestDir::new("nodir");
        let path = dir.path("absent/master.key");
        let message = message_and_hint(&MasterKey::load_or_create(&path).expect_err("no dir")).0;
        assert!(message.starts_with("could not create master key file"), "{message}");
    }

    #[test]
    fn racing_creators_end_up_with_the_same_key() {
        const THREADS: usize = 8;
        for round in 0..10 {
            let dir = TestDir::new("race");
            let path = Arc::new(dir.path("master.key"));
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    let (path, barrier) = (Arc::clone(&path), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        MasterKey::load_or_create(&path).expect("load_or_create")
                    })
                })
                .collect();
            let keys: Vec<MasterKey> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
            let on_disk = MasterKey::load(&path).expect("load");
            for k in &keys {
                assert_eq!(k.id(), on_disk.id(), "round {round}");
                assert_eq!(k.key[..], on_disk.key[..], "round {round}");
            }
            assert_eq!(dir.entries(), vec!["master.key".to_string()], "round {round}: temporaries left");
        }
    }
}
