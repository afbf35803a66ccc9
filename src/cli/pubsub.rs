//! PLACEHOLDER written by the daemon author so main.rs compiles; the client helper replaces this file.
#[derive(clap::Args)]
pub struct SubArgs {}
#[derive(clap::Args)]
pub struct PubArgs {}
pub async fn run_sub(_args: SubArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
pub async fn run_pub(_args: PubArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
