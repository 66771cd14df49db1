//! Command-line tools beside `serve`: checking a configuration, and making a client
//! token for development and tests.

use anyhow::{bail, Context as _};

use super::config::Config;
use crate::auth::Authenticator;
use crate::vocab::UserId;
use crate::webhooks::Endpoint;

/// Checks what a start would check beyond the configuration's own validation: the
/// client authentication keys and the webhook receiver. Returns a one-line summary.
pub fn check(config: &Config) -> anyhow::Result<String> {
    let auth = Authenticator::new(&config.auth, config.dev_auth)?;
    if config.webhooks.enabled() {
        Endpoint::parse(&config.webhooks.url)?.with_ca_file(&config.webhooks.ca_file)?;
    }
    let store = if config.store.url.is_empty() {
        format!("SQLite in {}", config.store.data_dir)
    } else {
        "PostgreSQL".to_owned()
    };
    let auth = if config.dev_auth {
        "development mode"
    } else if auth.is_configured() {
        "JWT"
    } else {
        "none (every client refused)"
    };
    Ok(format!(
        "ok: listen {}, store {store}, auth {auth}, cluster {}, webhooks {}",
        config.listen,
        if config.cluster.redis.is_empty() {
            "off"
        } else {
            "on"
        },
        if config.webhooks.enabled() {
            "on"
        } else {
            "off"
        },
    ))
}

/// Every setting with its default and a line of help, as a configuration file that
/// `check-config` accepts.
pub fn gen_config() -> anyhow::Result<String> {
    let toml::Value::Table(defaults) = toml::Value::try_from(Config::default())? else {
        bail!("the default configuration is not a table");
    };
    let help = |key: &str| {
        super::help::HELP
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, h)| *h)
    };
    let mut out = String::from(
        "# herald configuration: every setting with its default (see the README's table).\n\n",
    );
    let entry = |out: &mut String, key: &str, full: &str, v: &toml::Value| {
        out.push_str(&format!("# {}\n{key} = {v}\n", help(full)));
    };
    for (k, v) in defaults.iter().filter(|(_, v)| !v.is_table()) {
        entry(&mut out, k, k, v);
    }
    for (section, v) in defaults.iter() {
        let toml::Value::Table(t) = v else { continue };
        out.push_str(&format!("\n[{section}]\n"));
        for (k, v) in t {
            entry(&mut out, k, &format!("{section}.{k}"), v);
        }
    }
    Ok(out)
}

/// A token for `user`, valid for `ttl`, signed with the configured secret.
pub fn token(config: &Config, user: &str, ttl: &str) -> anyhow::Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    if config.auth.jwt_secret.is_empty() {
        bail!("herald token signs with auth.jwt_secret, which is not set (tokens for a public key come from your identity provider)");
    }
    let user = UserId::parse(user.to_owned())
        .map_err(|e| anyhow::anyhow!("--user: {e}"))?
        .into_string();
    let secs = ttl_secs(ttl).with_context(|| format!("--ttl `{ttl}`"))?;
    let alg = match config.auth.jwt_algorithm.as_str() {
        "" | "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => {
            bail!("auth.jwt_algorithm `{other}` is not one herald token can sign with a secret")
        }
    };
    let now = crate::vocab::now_ms() / 1000;
    let mut claims = serde_json::json!({"sub": user, "iat": now, "exp": now + secs});
    if !config.auth.issuer.is_empty() {
        claims["iss"] = config.auth.issuer.clone().into();
    }
    if !config.auth.audience.is_empty() {
        claims["aud"] = config.auth.audience.clone().into();
    }
    Ok(jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(config.auth.jwt_secret.as_bytes()),
    )?)
}

/// `90`, `90s`, `15m`, `1h`, `7d` as seconds.
/// The longest `--ttl`: ten years.
const MAX_TTL_SECS: u64 = 10 * 366 * 86_400;

fn ttl_secs(ttl: &str) -> anyhow::Result<u64> {
    let ttl = ttl.trim();
    let (n, unit) = match ttl.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&ttl[..i], &ttl[i..]),
        None => (ttl, "s"),
    };
    let n: u64 = n
        .parse()
        .context("expected a whole number with an optional unit s, m, h or d")?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("unknown unit `{unit}`: use s, m, h or d"),
    };
    match n.checked_mul(per) {
        Some(s) if (1..=MAX_TTL_SECS).contains(&s) => Ok(s),
        _ => bail!("must be from 1 second to 10 years"),
    }
}

#[cfg(test)]
mod tests {
    use super::ttl_secs;

    #[test]
    fn every_setting_has_a_line_of_help() {
        let toml::Value::Table(defaults) = toml::Value::try_from(super::Config::default()).unwrap()
        else {
            panic!("not a table");
        };
        let mut missing = Vec::new();
        for (k, v) in &defaults {
            let keys: Vec<String> = match v {
                toml::Value::Table(t) => t.keys().map(|s| format!("{k}.{s}")).collect(),
                _ => vec![k.clone()],
            };
            for key in keys {
                if !super::super::help::HELP.iter().any(|(h, _)| *h == key) {
                    missing.push(key);
                }
            }
        }
        assert!(missing.is_empty(), "settings without help: {missing:?}");
    }

    #[test]
    fn ttls() {
        assert_eq!(ttl_secs("90").unwrap(), 90);
        assert_eq!(ttl_secs("15m").unwrap(), 900);
        assert_eq!(ttl_secs("1h").unwrap(), 3600);
        assert_eq!(ttl_secs("7d").unwrap(), 604_800);
        assert_eq!(ttl_secs("3660d").unwrap(), 3660 * 86_400);
        // Past ten years, and what would overflow `iat + ttl`, are refused.
        for bad in [
            "",
            "0",
            "1w",
            "h",
            "-1h",
            "99999999999999999999d",
            "3661d",
            "18446744073709551615s",
            "213503982334601d",
        ] {
            assert!(ttl_secs(bad).is_err(), "{bad}");
        }
    }
}
