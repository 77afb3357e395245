//! The job spec shown in the README parses to what the README says it means.

use spate_scheduler::spec::JobPlan;

#[test]
fn readme_job_spec_parses_as_described() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md at the workspace root");
    let block = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a ```toml block in the README");
    let plan = JobPlan::parse(block).unwrap_or_else(|e| panic!("README spec refused: {e}"));
    assert_eq!(plan.streams.len(), 2);
    assert_eq!(plan.streams[0].node, "printer2");
    assert_eq!(plan.streams[1].node, "printer");
    assert_eq!(plan.total_bytes(), 1 << 30);
    assert_eq!(plan.streams[0].len + plan.streams[1].len, 1 << 30);
}
