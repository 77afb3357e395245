fn main() {
    // `--cfg loom` builds only the atomics protocol against loom (see tests/loom.rs).
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
