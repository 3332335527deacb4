//! Replays the fuzzers' corpus and crash reproducers (`fuzz/corpus/<target>`,
//! `fuzz/regressions/<target>`) through the same entry points the fuzzers
//! call (`qtapd::fuzz`), so what they once found stays fixed in `make test`.

use std::{fs, path::Path};

#[test]
fn every_saved_fuzz_input_still_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, run) in qtapd::fuzz::TARGETS {
        let mut inputs = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = fs::read(&path).unwrap();
                // Named on stderr first, so a failure says which input.
                eprintln!("{}", path.display());
                run(&data);
                inputs += 1;
            }
        }
        assert!(
            inputs >= 10,
            "only {inputs} saved inputs for fuzz target {name}"
        );
        println!("fuzz target {name}: {inputs} saved inputs hold");
    }
}
