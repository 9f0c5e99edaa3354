//! unpack_tar_safely never writes outside its directory, whatever the tar says.

use diffkeeper_rpc::unpack_tar_safely;

/// A tar entry with a raw name: tar's own path setters refuse `..`, a hostile tar does not.
fn append_raw(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn symlink(builder: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, name, target).unwrap();
}

#[test]
fn climbing_entries_are_left_out_and_absolute_ones_stay_inside() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("out");
    let mut builder = tar::Builder::new(Vec::new());
    append_raw(
        &mut builder,
        "../escaped.txt",
        tar::EntryType::Regular,
        b"x",
    );
    append_raw(&mut builder, "/abs.txt", tar::EntryType::Regular, b"abs");
    append_raw(&mut builder, "ok/file.txt", tar::EntryType::Regular, b"ok");
    let tar = builder.into_inner().unwrap();

    unpack_tar_safely(&tar[..], &dir).unwrap();
    assert!(!root.path().join("escaped.txt").exists());
    assert_eq!(std::fs::read(dir.join("abs.txt")).unwrap(), b"abs");
    assert_eq!(std::fs::read(dir.join("ok/file.txt")).unwrap(), b"ok");
}

#[test]
fn writing_through_a_symlink_that_leads_outside_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("out");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    symlink(&mut builder, "link", outside.to_str().unwrap());
    append_raw(
        &mut builder,
        "link/planted.txt",
        tar::EntryType::Regular,
        b"x",
    );
    let tar = builder.into_inner().unwrap();

    let e = unpack_tar_safely(&tar[..], &dir).unwrap_err();
    assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    assert!(!outside.join("planted.txt").exists());
    // The symlink itself is kept, as recorded.
    assert_eq!(std::fs::read_link(dir.join("link")).unwrap(), outside);
}
