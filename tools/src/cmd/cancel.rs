//! PLACEHOLDER: replaced by the real command in this same change.

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_a: Args) -> anyhow::Result<i32> {
    anyhow::bail!("not built yet")
}
