//! seccomp profiles in Docker's format: ferry's default (`seccomp/default.json`,
//! kept as data), `--security-opt seccomp=FILE`, or none (`unconfined`).
//! Compiled with libseccomp, the library Docker's runtimes use, and loaded
//! by the workload as its last step before exec.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use serde::{Deserialize, Serialize};

/// ferry's default profile.
pub const DEFAULT: &str = include_str!("../seccomp/default.json");

/// A profile as Docker writes them (the parts ferry applies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u16>,
    #[serde(default)]
    pub syscalls: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub names: Vec<String>,
    /// Older profiles name one system call.
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u16>,
    #[serde(default)]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub includes: Filter,
    #[serde(default)]
    pub excludes: Filter,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// When a rule applies: all `caps` held (includes), none held (excludes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub arches: Vec<String>,
}

impl Profile {
    /// Parses a profile, refusing actions and operators ferry cannot apply.
    pub fn parse(text: &str) -> Result<Self, String> {
        let p: Self =
            serde_json::from_str(text).map_err(|e| format!("invalid seccomp profile: {e}"))?;
        action(&p.default_action, p.default_errno_ret)?;
        for r in &p.syscalls {
            action(&r.action, r.errno_ret.or(p.default_errno_ret))?;
            for a in &r.args {
                compare(a)?;
            }
        }
        Ok(p)
    }

    /// The default profile.
    pub fn default_profile() -> Result<Self, String> {
        Self::parse(DEFAULT)
    }

    /// Compiles the profile for a process holding `caps` (names such as
    /// `CAP_SYS_ADMIN`) and loads it into the calling thread. System calls
    /// this kernel or architecture does not know are skipped, as runc does.
    pub fn load(&self, caps: &[&str]) -> Result<(), String> {
        fn fail(what: &'static str) -> impl Fn(libseccomp::error::SeccompError) -> String {
            move |e| format!("seccomp: {what}: {e}")
        }
        let default = action(&self.default_action, self.default_errno_ret)?;
        let mut ctx = ScmpFilterContext::new(default).map_err(fail("new filter"))?;
        // 32-bit system calls of an x86-64 host get the same rules (their
        // numbers differ): without this they would bypass a deny list.
        if ScmpArch::native() == ScmpArch::X8664 {
            for arch in [ScmpArch::X86, ScmpArch::X32] {
                ctx.add_arch(arch).map_err(fail("adding an architecture"))?;
            }
        }
        for rule in &self.syscalls {
            let held = |c: &String| caps.contains(&c.as_str());
            if !rule.includes.caps.iter().all(held) || rule.excludes.caps.iter().any(held) {
                continue;
            }
            let act = action(&rule.action, rule.errno_ret.or(self.default_errno_ret))?;
            // libseccomp refuses rules that repeat the default.
            if act == default {
                continue;
            }
            let args: Vec<ScmpArgCompare> =
                rule.args.iter().map(compare).collect::<Result<_, _>>()?;
            for name in rule.names.iter().chain(&rule.name) {
                let Ok(syscall) = ScmpSyscall::from_name(name) else {
                    continue;
                };
                ctx.add_rule_conditional(act, syscall, &args)
                    .map_err(|e| format!("seccomp: rule for {name}: {e}"))?;
            }
        }
        ctx.load().map_err(fail("loading the filter"))
    }
}

fn action(name: &str, errno: Option<u16>) -> Result<ScmpAction, String> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => ScmpAction::Allow,
        "SCMP_ACT_ERRNO" => ScmpAction::Errno(i32::from(errno.unwrap_or(libc::EPERM as u16))),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ScmpAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => ScmpAction::KillProcess,
        "SCMP_ACT_TRAP" => ScmpAction::Trap,
        "SCMP_ACT_LOG" => ScmpAction::Log,
        other => return Err(format!("seccomp profile: unsupported action {other}")),
    })
}

fn compare(a: &Arg) -> Result<ScmpArgCompare, String> {
    let op = match a.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // Docker's format: `value` is the mask, `valueTwo` the datum.
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ScmpArgCompare::new(
                a.index,
                ScmpCompareOp::MaskedEqual(a.value),
                a.value_two,
            ));
        }
        other => return Err(format!("seccomp profile: unsupported operator {other}")),
    };
    Ok(ScmpArgCompare::new(a.index, op, a.value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_parses_and_bad_ones_are_named() {
        let p = Profile::default_profile().expect("default profile");
        assert_eq!(p.default_action, "SCMP_ACT_ALLOW");
        assert!(
            p.syscalls
                .iter()
                .any(|r| r.names.iter().any(|n| n == "keyctl"))
        );
        let bad = Profile::parse(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
        assert!(
            bad.expect_err("refused")
                .contains("unsupported action SCMP_ACT_NOTIFY")
        );
        let bad = Profile::parse("{");
        assert!(
            bad.expect_err("refused")
                .contains("invalid seccomp profile")
        );
    }
}
