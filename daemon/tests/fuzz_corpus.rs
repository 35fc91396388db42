//! The fuzz targets' corpus (fuzz/corpus/<target>/: the seeds and every
//! input `cargo xtask fuzz` kept) replayed through the properties the
//! targets check (fuzz/properties.rs), in the ordinary test build: an input
//! that once found a bug keeps being checked by `cargo xtask test` without
//! the nightly sanitizer build, which `cargo xtask fuzz` runs to explore.

#[path = "../../fuzz/properties.rs"]
mod properties;

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

/// A fuzz target's property: panics on an input that breaks it.
type Property = fn(&[u8]);

/// Every fuzz target and its property.
const TARGETS: &[(&str, Property)] = &[
    ("client_hello", properties::client_hello),
    ("request_parse", properties::request_parse),
    ("usage_meter", properties::usage_meter),
    ("websocket_meter", properties::websocket_meter),
    ("config", properties::config),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The inputs of `target`'s corpus on which `property` panics.
fn failing_inputs(target: &str, property: Property) -> Vec<String> {
    let corpus = fuzz_dir().join("corpus").join(target);
    let mut inputs: Vec<PathBuf> = fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", corpus.display()))
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", corpus.display()));
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no input", corpus.display());
    inputs
        .iter()
        .filter(|input| {
            let data =
                fs::read(input).unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
            catch_unwind(AssertUnwindSafe(|| property(&data))).is_err()
        })
        .map(|input| input.display().to_string())
        .collect()
}

#[test]
fn every_corpus_input_keeps_its_property() {
    let failed: Vec<String> = TARGETS
        .iter()
        .flat_map(|(target, property)| failing_inputs(target, *property))
        .collect();
    assert!(failed.is_empty(), "properties fail on {failed:?}");
}

#[test]
fn a_failing_property_is_reported_for_each_input() {
    let inputs = fs::read_dir(fuzz_dir().join("corpus/config"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    let failed = failing_inputs("config", |_| panic!("the property fails"));
    assert_eq!(failed.len(), inputs);
    assert!(inputs > 0);
}

#[test]
fn each_fuzz_target_is_replayed_here() {
    let mut on_disk: Vec<String> = fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap_or_else(|e| panic!("cannot read fuzz/fuzz_targets: {e}"))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let mut replayed: Vec<String> = TARGETS.iter().map(|(t, _)| (*t).to_owned()).collect();
    replayed.sort();
    assert_eq!(on_disk, replayed);
}
