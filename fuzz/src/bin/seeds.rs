//! Writes the seed corpora: `fuzz/corpus/<target>/seed-<name>`, one file per
//! seed of each target's `seeds()`. Files of other names (inputs a long run
//! found and `-merge=1` kept) are left alone. Run by `scripts/fuzz --seeds`.

use std::path::Path;

type Seeds = fn() -> Vec<rtgt_fuzz::Seed>;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [(&str, Seeds); 4] = [
        ("pdu_decode", rtgt_fuzz::pdu_decode::seeds),
        ("text_keys", rtgt_fuzz::text_keys::seeds),
        ("login", rtgt_fuzz::login::seeds),
        ("cdb", rtgt_fuzz::cdb::seeds),
    ];
    for (target, seeds) in targets {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        // Regenerate ours only.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seed-"))
            {
                std::fs::remove_file(path)?;
            }
        }
        let seeds = seeds();
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}
