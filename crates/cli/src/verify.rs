//! `diffkeeper verify`: read every stored block against its checksum and say which files and
//! moments a damaged one breaks (everything else exports as usual).

use crate::quoted::quoted;
use diffkeeper_store::{Damage, SegmentUse, Seq, Store};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: crate::StateDir,
}

/// Exit code when damage was found: as `export` exits when it had to leave files out.
pub const EXIT_DAMAGED: i32 = 3;

pub fn run(a: Args) -> anyhow::Result<i32> {
    let store = crate::open_store(&a.state)?;
    crate::note_what_is_missing(&store);
    let found = store.verify()?;
    if found.damage.is_empty() {
        println!(
            "verified {}: {} stored blocks, every one intact",
            a.state.state_dir.display(),
            found.blocks
        );
        return Ok(0);
    }
    for d in &found.damage {
        println!("{}", describe(&store, d)?);
    }
    println!(
        "{} of {} stored blocks damaged, {} span(s) of file content lost; every other file and \
         moment exports as usual (export leaves the damaged files out and exits {EXIT_DAMAGED})",
        found
            .damage
            .iter()
            .map(|d| &d.reason)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        found.blocks,
        found.damage.len()
    );
    Ok(EXIT_DAMAGED)
}

/// "damaged  /w/f3  from +2.401s (@seq:120) to +4.8s (@seq:301): its written data: block ...".
fn describe(store: &Store, d: &Damage) -> anyhow::Result<String> {
    let path = store
        .tree_at(d.from)?
        .entries
        .into_iter()
        .find(|(_, e)| e.node == d.node)
        .map_or_else(
            || format!("(file node {})", d.node),
            |(p, _)| quoted(p.as_bytes()).into_owned(),
        );
    let until = match d.until {
        Some(seq) => format!("up to {}", at(store, seq)?),
        None => "to the end".to_string(),
    };
    let what = match d.what {
        SegmentUse::Data => "data written then",
        SegmentUse::Keyframe => "a keyframe of it",
    };
    Ok(format!(
        "damaged  {path}  from {} {until}: {what} is unreadable ({})",
        at(store, d.from)?,
        d.reason
    ))
}

/// "+2.401s (@seq:120)".
fn at(store: &Store, seq: Seq) -> anyhow::Result<String> {
    let point = crate::moment(store, &format!("@seq:{seq}"))?;
    Ok(format!(
        "{} (@seq:{seq})",
        crate::offset_label(&store.span(), point.mono_ns)
    ))
}
