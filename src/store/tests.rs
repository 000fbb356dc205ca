//! The store's tests: manifests, names and drop-in files in a temporary directory.

use super::*;

fn temp_store(tag: &str) -> (PathBuf, ModelStore) {
    let dir = std::env::temp_dir().join(format!("hearth-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    (dir.clone(), ModelStore::with_ollama(dir, None))
}

#[test]
fn names_get_a_default_tag() {
    assert_eq!(normalize_name("foo").expect("ok"), "foo:latest");
    assert_eq!(normalize_name("smollm2:135m").expect("ok"), "smollm2:135m");
    assert_eq!(normalize_name("qwen2.5:0.5b").expect("ok"), "qwen2.5:0.5b");
}

#[test]
fn names_with_paths_are_refused() {
    for bad in ["../etc/passwd", "a/b", "a:b:c", "", ":x", "x:", "a b", "..", "a\\b", ".", ".hidden", "a:.x", "-x"] {
        assert!(normalize_name(bad).is_err(), "{bad:?} should be refused");
    }
    assert!(normalize_name(&"a".repeat(201)).is_err());
}

#[test]
fn digests_must_be_sha256_hex() {
    let good = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(digest_hex(&good).expect("ok"), "ab".repeat(32));
    for bad in ["sha256:../../x", "sha256-abc", "md5:00", &format!("sha256:{}", "g".repeat(64)), &format!("sha256:{}/", "a".repeat(63))] {
        assert!(digest_hex(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn lists_and_resolves_gguf_files() {
    let (dir, store) = temp_store("dropin");
    std::fs::write(dir.join("m:1b.gguf"), b"x").expect("write");
    std::fs::write(dir.join("plain.gguf"), b"y").expect("write");
    std::fs::write(dir.join("notes.txt"), b"z").expect("write");
    let names: Vec<_> = store.list().expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["m:1b", "plain:latest"]);
    assert!(store.resolve("plain").is_ok());
    assert!(matches!(store.resolve("nope"), Err(StoreError::NotFound(_))));
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn copies_share_one_blob_and_removal_keeps_what_is_still_used() {
    let (dir, store) = temp_store("copy");
    std::fs::write(dir.join("base.gguf"), b"weights").expect("write");
    store.copy("base", "one:a").expect("copy");
    store.copy("one:a", "two").expect("copy");
    let a = store.resolve("one:a").expect("one");
    let b = store.resolve("two").expect("two");
    assert_eq!(a.origin, Origin::Hearth);
    assert_eq!(a.path, b.path, "both names use one blob");
    assert_eq!(std::fs::read(&a.path).expect("blob"), b"weights");
    store.remove("one:a").expect("rm");
    assert!(b.path.is_file(), "still used by 'two'");
    store.remove("two").expect("rm");
    assert!(!b.path.exists(), "unused blob pruned");
    assert!(matches!(store.resolve("two"), Err(StoreError::NotFound(_))));
    assert!(store.resolve("base").is_ok(), "the drop-in is untouched");
    std::fs::remove_dir_all(dir).expect("cleanup");
}

#[test]
fn a_header_is_parsed_once_per_version_of_the_file() {
    use super::gguf::tests::builder::{v_str, Builder};
    let (dir, store) = temp_store("headers");
    let path = dir.join("m.gguf");
    std::fs::write(&path, Builder::model().bytes()).expect("write");
    let first = store.header(&path).expect("valid");
    let again = store.header(&path).expect("valid");
    assert!(std::sync::Arc::ptr_eq(&first, &again), "the second read came from the cache");
    assert_eq!(store.headers_kept(), 1);
    // Another file in its place (another size) is read again.
    let mut b = Builder::model();
    b.set("general.name", v_str("a longer name than before"));
    std::fs::write(&path, b.bytes()).expect("rewrite");
    let changed = store.header(&path).expect("valid");
    assert!(!std::sync::Arc::ptr_eq(&first, &changed));
    assert_eq!(changed.metadata.get("general.name").and_then(|v| v.as_str()), Some("a longer name than before"));
    // A file that is gone is an error, not the old header.
    std::fs::remove_file(&path).expect("rm");
    assert!(store.header(&path).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

// Names resolved once per version of their files (resolved.rs).

#[test]
fn a_drop_in_is_known_until_it_changes_or_goes() {
    let (dir, store) = temp_store("resolved-drop-in");
    let file = dir.join("tiny:latest.gguf");
    std::fs::write(&file, b"four").expect("write");
    assert!(store.resolve_known("tiny").is_none(), "nothing resolved yet");
    let first = store.resolve("tiny").expect("resolves");
    let known = store.resolve_known("tiny").expect("known after resolve");
    assert_eq!((known.path, known.size), (first.path, 4));
    std::fs::write(&file, b"five!").expect("rewrite");
    assert!(store.resolve_known("tiny").is_none(), "a changed file is resolved again");
    assert_eq!(store.resolve("tiny").expect("resolves").size, 5);
    std::fs::remove_file(&file).expect("remove");
    assert!(store.resolve_known("tiny").is_none(), "a removed file is not known");
    assert!(store.resolve("tiny").is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_manifest_appearing_over_a_drop_in_is_seen() {
    let (dir, store) = temp_store("resolved-manifest");
    std::fs::write(dir.join("tiny:latest.gguf"), b"four").expect("write");
    store.resolve("tiny").expect("resolves");
    assert!(store.resolve_known("tiny").is_some());
    // The manifest path was looked at (absent) when the drop-in was found: anything there
    // now makes the name resolve afresh.
    let manifest = dir.join("manifests").join("tiny").join("latest");
    std::fs::create_dir_all(manifest.parent().expect("parent")).expect("dirs");
    std::fs::write(&manifest, b"{}").expect("manifest");
    assert!(store.resolve_known("tiny").is_none());
    let _ = std::fs::remove_dir_all(dir);
}
