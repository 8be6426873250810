fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for p in ordo_operator::crdgen::write_all(&ordo_operator::crdgen::output_dirs(&root)).unwrap() {
        println!("{}", p.display());
    }
}
