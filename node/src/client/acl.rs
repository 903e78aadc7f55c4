//! `stackd acl …`: tokens, policies and JWT providers.

use clap::Subcommand;

use super::{parse_ttl, print_json, Target};
use crate::api::acl::{JwtProviderSet, PolicySet, RuleView, TokenCreate, TokenUpdate};

#[derive(Subcommand, Debug)]
pub enum AclCmd {
    /// Tokens: create, list, show, update, delete; `self` shows the token in use.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Policies: set (create or replace), list, show, delete.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// JWT providers: whose signed JWTs act as tokens (set, list, delete).
    #[command(subcommand)]
    Jwt(JwtCmd),
}

#[derive(Subcommand, Debug)]
pub enum JwtCmd {
    /// Create or replace a provider from its settings, JSON (or @FILE): {"issuer", "audience",
    /// "leeway_ms", "keys": [{"kid", "alg", "key"}], "jwks", "policies", "channels_claim"}.
    Set {
        name: String,
        settings: String,
        #[command(flatten)]
        target: Target,
    },
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Delete a provider: its JWTs are refused from then on.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a token; prints its secret (shown this once) on stdout, its accessor id on stderr.
    Create {
        #[arg(long, default_value = "")]
        description: String,
        /// A policy the token carries (repeat for more).
        #[arg(long = "policy", value_name = "NAME")]
        policies: Vec<String>,
        /// Every right, policies aside.
        #[arg(long)]
        management: bool,
        /// Lifetime: a number with s, m, h or d (e.g. 30d); default: never expires.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Print the whole JSON answer instead of the secret alone.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List every token (without secrets).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show a token by accessor id.
    Get {
        accessor_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show the token this command sends.
    #[command(name = "self")]
    Whoami {
        #[command(flatten)]
        target: Target,
    },
    /// Change a token's description, policies (replaced whole) or lifetime.
    Update {
        accessor_id: String,
        #[arg(long)]
        description: Option<String>,
        /// The policies the token carries from now on (repeat; replaces the list).
        #[arg(long = "policy", value_name = "NAME")]
        policies: Vec<String>,
        /// Take every policy away.
        #[arg(long, conflicts_with = "policies")]
        no_policies: bool,
        /// A new lifetime from now (e.g. 7d).
        #[arg(long, value_parser = parse_ttl, conflicts_with = "never_expires")]
        ttl: Option<u64>,
        /// Make the token never expire.
        #[arg(long)]
        never_expires: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete (revoke) a token.
    Delete {
        accessor_id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create or replace a policy from its rules, a JSON array such as
    /// '[{"resource":"kv","prefix":"app/","access":"write"}]' (or @FILE to read one).
    Set {
        name: String,
        rules: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        target: Target,
    },
    List {
        #[command(flatten)]
        target: Target,
    },
    Get {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a policy no token carries.
    Delete {
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(cmd: AclCmd) -> anyhow::Result<()> {
    match cmd {
        AclCmd::Token(cmd) => token(cmd).await,
        AclCmd::Policy(cmd) => policy(cmd).await,
        AclCmd::Jwt(cmd) => jwt(cmd).await,
    }
}

/// A JSON argument, or the contents of the file after `@`.
fn json_arg(arg: String) -> anyhow::Result<String> {
    Ok(match arg.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?
        }
        None => arg,
    })
}

async fn jwt(cmd: JwtCmd) -> anyhow::Result<()> {
    match cmd {
        JwtCmd::Set {
            name,
            settings,
            target,
        } => {
            let req: JwtProviderSet = serde_json::from_str(&json_arg(settings)?)
                .map_err(|e| anyhow::anyhow!("the provider settings: {e}"))?;
            print_json(&target.client()?.acl_jwt_set(&name, &req).await?)
        }
        JwtCmd::List { target } => print_json(&target.client()?.acl_jwt_providers().await?),
        JwtCmd::Delete { name, target } => {
            print_json(&target.client()?.acl_jwt_delete(&name).await?)
        }
    }
}

async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            description,
            policies,
            management,
            ttl,
            json,
            target,
        } => {
            let req = TokenCreate {
                description,
                policies,
                management,
                ttl_ms: ttl,
            };
            let made = target.client()?.acl_token_create(&req).await?;
            if json {
                print_json(&made)?;
            } else {
                outln!("{}", made.secret);
                eprintln!("stackd acl: token {} made", made.token.accessor_id);
            }
            Ok(())
        }
        TokenCmd::List { target } => print_json(&target.client()?.acl_tokens().await?),
        TokenCmd::Get {
            accessor_id,
            target,
        } => print_json(&target.client()?.acl_token(&accessor_id).await?),
        TokenCmd::Whoami { target } => print_json(&target.client()?.acl_token_self().await?),
        TokenCmd::Update {
            accessor_id,
            description,
            policies,
            no_policies,
            ttl,
            never_expires,
            target,
        } => {
            let req = TokenUpdate {
                description,
                policies: (no_policies || !policies.is_empty()).then_some(policies),
                ttl_ms: if never_expires { Some(0) } else { ttl },
            };
            print_json(
                &target
                    .client()?
                    .acl_token_update(&accessor_id, &req)
                    .await?,
            )
        }
        TokenCmd::Delete {
            accessor_id,
            target,
        } => print_json(&target.client()?.acl_token_delete(&accessor_id).await?),
    }
}

async fn policy(cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Set {
            name,
            rules,
            description,
            target,
        } => {
            let text = json_arg(rules)?;
            let rules: Vec<RuleView> = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "the rules are a JSON array of {{\"resource\", \"name\" or \"prefix\", \"access\"}}: {e}"
                )
            })?;
            let req = PolicySet { description, rules };
            print_json(&target.client()?.acl_policy_set(&name, &req).await?)
        }
        PolicyCmd::List { target } => print_json(&target.client()?.acl_policies().await?),
        PolicyCmd::Get { name, target } => print_json(&target.client()?.acl_policy(&name).await?),
        PolicyCmd::Delete { name, target } => {
            print_json(&target.client()?.acl_policy_delete(&name).await?)
        }
    }
}
