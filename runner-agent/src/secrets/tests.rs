//! Store-level tests: the whole path from `set` to the files and back.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

fn store() -> (tempfile::TempDir, SecretStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = SecretStore::open(tmp.path()).unwrap();
    (tmp, store)
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn set_get_round_trip_with_fingerprint() {
    let (_tmp, store) = store();
    let fp = store.set("ci", "TOKEN", b"s3cr3t-value").unwrap();
    let secret = store.get("ci", "TOKEN").unwrap();
    assert_eq!(secret.value(), b"s3cr3t-value");
    assert_eq!(secret.value_str().unwrap(), "s3cr3t-value");
    assert_eq!(secret.name, "TOKEN");
    assert_eq!(secret.fingerprint, fp);
    assert!(fp.starts_with(FINGERPRINT_PREFIX), "{fp}");
    let debug = format!("{secret:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
}

#[test]
fn layout_and_permissions() {
    let (tmp, store) = store();
    store.set("ci", "TOKEN", b"v").unwrap();
    let root = tmp.path().join("secrets");
    for dir in [
        root.clone(),
        root.join("keys"),
        root.join("values"),
        root.join("values/ci"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let key = root.join("keys/ci.key");
    let value = root.join("values/ci/TOKEN.secret");
    assert_eq!(store.key_path("ci"), key);
    assert_eq!(store.value_path("ci", "TOKEN"), value);
    for file in [&key, &value] {
        assert_eq!(mode(file), 0o600, "{}", file.display());
        assert_eq!(
            fs::metadata(file).unwrap().uid(),
            nix::unistd::geteuid().as_raw()
        );
    }
    assert_eq!(fs::read(&key).unwrap().len(), format::KEY_FILE_LEN);
    assert_eq!(fs::read(&value).unwrap().len(), 1 + format::VALUE_OVERHEAD);
}

#[test]
fn no_plaintext_on_disk() {
    use base64::Engine as _;
    let (tmp, store) = store();
    let value = b"plaintext-canary-4711";
    store.set("ci", "TOKEN", value).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    for file in all_files(tmp.path()) {
        let bytes = fs::read(&file).unwrap();
        assert!(!contains(&bytes, value), "{}", file.display());
        assert!(!contains(&bytes, b64.as_bytes()), "{}", file.display());
    }
}

#[test]
fn set_replaces_and_fingerprints_follow_values() {
    let (_tmp, store) = store();
    let first = store.set("ci", "TOKEN", b"one").unwrap();
    let second = store.set("ci", "TOKEN", b"two").unwrap();
    assert_ne!(first, second);
    assert_eq!(store.get("ci", "TOKEN").unwrap().value(), b"two");
    // Same value, same environment: same fingerprint, also under another name.
    assert_eq!(store.set("ci", "OTHER", b"one").unwrap(), first);
    // Same value, another environment (another key): another fingerprint.
    assert_ne!(store.set("release", "TOKEN", b"one").unwrap(), first);
}

#[test]
fn environments_have_separate_keys() {
    let (tmp, store) = store();
    store.set("ci", "A", b"x").unwrap();
    store.set("release", "A", b"x").unwrap();
    let keys = tmp.path().join("secrets/keys");
    assert_ne!(
        fs::read(keys.join("ci.key")).unwrap(),
        fs::read(keys.join("release.key")).unwrap()
    );
}

#[test]
fn a_file_moved_to_another_name_or_environment_does_not_decrypt() {
    let (_tmp, store) = store();
    store.set("ci", "A", b"value-a").unwrap();
    store.set("ci", "B", b"value-b").unwrap();
    store.set("release", "A", b"value-r").unwrap();
    // Copy ci/A over ci/B: same key, other name.
    fs::copy(store.value_path("ci", "A"), store.value_path("ci", "B")).unwrap();
    let err = store.get("ci", "B").unwrap_err();
    assert!(matches!(err, SecretError::Decrypt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("the value of ci/B")
            && text.contains("cannot be decrypted with the key of environment ci")
            && text.contains("wrong key or the file was altered"),
        "{text}"
    );
    // Copy ci/A over release/A: other environment, other key.
    fs::copy(
        store.value_path("ci", "A"),
        store.value_path("release", "A"),
    )
    .unwrap();
    assert!(matches!(
        store.get("release", "A").unwrap_err(),
        SecretError::Decrypt { .. }
    ));
    // The original is untouched.
    assert_eq!(store.get("ci", "A").unwrap().value(), b"value-a");
}

#[test]
fn a_swapped_key_fails_authentication() {
    let (_tmp, store) = store();
    store.set("ci", "A", b"a").unwrap();
    store.set("release", "B", b"b").unwrap();
    fs::copy(store.key_path("release"), store.key_path("ci")).unwrap();
    let err = store.get("ci", "A").unwrap_err();
    assert!(matches!(err, SecretError::Decrypt { .. }), "{err:?}");
    assert_eq!(store.get("release", "B").unwrap().value(), b"b");
}

#[test]
fn corrupted_and_truncated_files_say_which_and_what() {
    let (_tmp, store) = store();
    store.set("ci", "A", b"value").unwrap();
    let path = store.value_path("ci", "A");
    let good = fs::read(&path).unwrap();
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"XXXX".iter().chain(&good[4..]).copied().collect(),
            "bad magic",
        ),
        (good[..10].to_vec(), "truncated"),
        (Vec::new(), "truncated"),
        (
            [&good[..4], &[9u8], &good[5..]].concat(),
            "unknown format version 9",
        ),
    ];
    for (bytes, says) in cases {
        fs::write(&path, &bytes).unwrap();
        let err = store.get("ci", "A").unwrap_err();
        assert!(matches!(err, SecretError::CorruptValue { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(says), "{says}: {text}");
    }
    // A flipped ciphertext byte is an authentication failure.
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x80;
    fs::write(&path, &flipped).unwrap();
    assert!(matches!(
        store.get("ci", "A").unwrap_err(),
        SecretError::Decrypt { .. }
    ));
    // A corrupted key file is reported as such.
    fs::write(store.key_path("ci"), b"RAK1\x01short").unwrap();
    let err = store.get("ci", "A").unwrap_err().to_string();
    assert!(
        err.contains("key file") && err.contains("corrupted"),
        "{err}"
    );
}

#[test]
fn loose_permissions_are_refused() {
    let (tmp, store) = store();
    store.set("ci", "A", b"value").unwrap();
    let value = store.value_path("ci", "A");
    fs::set_permissions(&value, fs::Permissions::from_mode(0o644)).unwrap();
    let err = store.get("ci", "A").unwrap_err();
    assert!(
        matches!(err, SecretError::InsecurePermissions { .. }),
        "{err:?}"
    );
    fs::set_permissions(&value, fs::Permissions::from_mode(0o600)).unwrap();
    let key = store.key_path("ci");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    assert!(store
        .get("ci", "A")
        .unwrap_err()
        .to_string()
        .contains("has mode 0640"));
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let root = tmp.path().join("secrets");
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let err = SecretStore::open(tmp.path()).err().unwrap().to_string();
    assert!(err.contains("has mode 0755"), "{err}");
}

#[test]
fn not_set_missing_key_and_bad_names() {
    let (_tmp, store) = store();
    assert!(matches!(
        store.get("ci", "A").unwrap_err(),
        SecretError::NotSet { .. }
    ));
    store.set("ci", "A", b"value").unwrap();
    fs::remove_file(store.key_path("ci")).unwrap();
    let err = store.get("ci", "A").unwrap_err();
    assert!(matches!(err, SecretError::MissingKey { .. }), "{err:?}");
    // No new key is minted over values that need the lost one.
    let err = store.set("ci", "B", b"other").unwrap_err();
    assert!(matches!(err, SecretError::MissingKey { .. }), "{err:?}");
    assert!(!store.key_path("ci").exists());
    for (env, name) in [
        ("../x", "A"),
        ("Ci", "A"),
        ("ci", "../A"),
        ("ci", "a"),
        ("ci", ".A"),
        ("", "A"),
    ] {
        let err = store.set(env, name, b"v").unwrap_err();
        assert!(err.is_bad_input(), "{env}/{name}: {err:?}");
    }
    assert!(matches!(
        store.set("ci2", "A", b"").unwrap_err(),
        SecretError::EmptyValue { .. }
    ));
    let huge = vec![b'x'; MAX_VALUE_LEN + 1];
    assert!(matches!(
        store.set("ci2", "A", &huge).unwrap_err(),
        SecretError::TooLarge { .. }
    ));
    assert_eq!(
        store
            .get("ci2", "A")
            .map(|s| s.fingerprint)
            .unwrap_err()
            .to_string(),
        format!(
            "secret ci2/A is not set (no file {})",
            store.value_path("ci2", "A").display()
        )
    );
}

#[test]
fn largest_value_round_trips() {
    let (_tmp, store) = store();
    let value: Vec<u8> = (0..MAX_VALUE_LEN).map(|i| (i % 251) as u8).collect();
    store.set("ci", "BIG", &value).unwrap();
    assert_eq!(store.get("ci", "BIG").unwrap().value(), &value[..]);
    assert!(matches!(
        store.get("ci", "BIG").unwrap().value_str().unwrap_err(),
        SecretError::NotUtf8 { .. }
    ));
}

#[test]
fn list_shows_fingerprints_and_survives_a_bad_file() {
    let (tmp, store) = store();
    let fp_a = store.set("ci", "A", b"a").unwrap();
    store.set("ci", "B", b"b").unwrap();
    let fp_r = store.set("release", "R", b"r").unwrap();
    fs::write(store.value_path("ci", "B"), b"garbage").unwrap();
    // Entries the store could not have written are skipped.
    fs::write(tmp.path().join("secrets/values/ci/.A.secret.tmp-0"), b"").unwrap();
    fs::write(tmp.path().join("secrets/values/ci/lower.secret"), b"").unwrap();
    let all = store.list(None).unwrap();
    let summary: Vec<(String, String, Option<String>)> = all
        .iter()
        .map(|i| {
            (
                i.env.clone(),
                i.name.clone(),
                i.fingerprint.as_ref().ok().cloned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("ci".into(), "A".into(), Some(fp_a)),
            ("ci".into(), "B".into(), None),
            ("release".into(), "R".into(), Some(fp_r)),
        ]
    );
    let err = all[1].fingerprint.as_ref().unwrap_err().to_string();
    assert!(err.contains("corrupted"), "{err}");
    assert_eq!(store.list(Some("release")).unwrap().len(), 1);
    assert!(store.list(Some("nothing")).unwrap().is_empty());
    assert_eq!(store.environments().unwrap(), ["ci", "release"]);
}

#[test]
fn remove_reports_whether_it_existed() {
    let (_tmp, store) = store();
    store.set("ci", "A", b"a").unwrap();
    assert!(store.remove("ci", "A").unwrap());
    assert!(!store.remove("ci", "A").unwrap());
    assert!(matches!(
        store.get("ci", "A").unwrap_err(),
        SecretError::NotSet { .. }
    ));
    // The key stays: a value set again has the same fingerprint as before.
    let fp = store.set("ci", "A", b"a").unwrap();
    store.remove("ci", "A").unwrap();
    assert_eq!(store.set("ci", "A", b"a").unwrap(), fp);
}

#[test]
fn secret_names() {
    for good in ["DEV_TOKEN", "_X", "A1"] {
        assert!(check_secret_name(good).is_ok(), "{good}");
    }
    for bad in ["", "dev_token", "1A", "A-B", "Dev", "A/B", "A.B"] {
        assert!(
            check_secret_name(bad)
                .unwrap_err()
                .contains("not a valid secret name"),
            "{bad}"
        );
    }
}
