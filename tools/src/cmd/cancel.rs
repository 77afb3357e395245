//! `spate cancel`: stop a job now (its rings are released, readers see it cancelled).

use spate_netlib::proto::Message;

use super::jobctl::{JobArgs, request};

#[derive(clap::Args, Debug)]
#[command(about = "Cancel a job (any state); its stream rings are released")]
pub struct Args {
    #[command(flatten)]
    pub job: JobArgs,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    request(&a.job, |job| Message::Cancel { job }, "cancel")?;
    println!("job {} cancelled", a.job.job);
    Ok(0)
}
