//! `registry`: schema migrations, the DynamoDB table, copying SQLite to PostgreSQL.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;

use super::Target;

#[derive(Subcommand)]
pub(crate) enum RegistryAction {
    /// Create the DynamoDB table and its indexes (registry.kind = "dynamodb").
    CreateTable,
    /// Bring the registry's schema up to this version (the server also does
    /// at start); prints the schema version before and after.
    Migrate,
    /// Copy a SQLite registry into PostgreSQL, row for row (rows already
    /// there are kept): `--from sqlite:<path> --to postgres:<url>`.
    Copy {
        /// `sqlite:<path>`.
        #[arg(long)]
        from: String,
        /// `postgres:<url>` (`postgres://user@host:port/dbname`); the
        /// password, if any, from `PGPASSWORD`.
        #[arg(long)]
        to: String,
    },
}

pub(crate) async fn copy_registry(from: &str, to: &str) -> anyhow::Result<()> {
    let source = from
        .strip_prefix("sqlite:")
        .context("--from: expected sqlite:<path>")?;
    let url = to
        .strip_prefix("postgres:")
        .context("--to: expected postgres:<url>")?;
    let mut options = est_server::registry::PostgresOptions::from_url(url)?;
    if let Ok(password) = std::env::var("PGPASSWORD") {
        options.config.password(password);
    }
    let target = est_server::registry::PostgresRegistry::open(options).await?;
    for (table, rows) in target.copy_from_sqlite(Path::new(source)).await? {
        println!("{table:<18} {rows} rows copied");
    }
    Ok(())
}

pub(crate) async fn migrate(target: Target) -> anyhow::Result<()> {
    use est_server::config::RegistryKind;
    let config = target.config()?;
    match config.registry.kind {
        RegistryKind::Postgres => {
            let options = est_server::server::postgres_options(&config.registry)?;
            let (before, after) = est_server::registry::PostgresRegistry::connect(options)?
                .migrate()
                .await?;
            println!("registry schema version {before} -> {after}");
        }
        // SQLite migrates when it opens; DynamoDB has no schema to migrate.
        RegistryKind::Sqlite | RegistryKind::Dynamodb => {
            est_server::server::open_registry(&config).await?;
            println!("registry is up to date");
        }
    }
    Ok(())
}

#[cfg(feature = "aws")]
pub(crate) async fn create_table(target: Target) -> anyhow::Result<()> {
    let config = target.config()?;
    if config.registry.kind != est_server::config::RegistryKind::Dynamodb {
        anyhow::bail!("registry.kind is not \"dynamodb\"");
    }
    let sdk = est_server::server::aws_sdk_config(&config).await;
    est_server::registry::DynamoDbRegistry::new(&sdk, config.registry.table.clone())
        .create_table()
        .await?;
    println!("table {} is ready", config.registry.table);
    Ok(())
}

#[cfg(not(feature = "aws"))]
pub(crate) async fn create_table(_: Target) -> anyhow::Result<()> {
    anyhow::bail!("this build has no DynamoDB support")
}
