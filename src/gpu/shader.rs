//! WGSL specialisation: a tiny line preprocessor, so one `.wgsl` file serves every capability
//! variant (with or without `shader-f16`, with or without subgroups) and every size constant.
//!
//! Supported syntax, nothing more:
//! - `#if NAME`, `#if !NAME`, `#else`, `#endif` on their own lines (nesting allowed);
//! - `{{NAME}}` anywhere in a line, replaced by the define's value.
//!
//! Kept deliberately small: a full preprocessor (ggml's `pre_wgsl.hpp`) is only worth it when
//! several `#ifdef` families interact, and every extra feature is one more way for the Rust key
//! and the shader text to disagree.

use crate::{Error, Result};

/// Expands `source` with the boolean `flags` and `{{NAME}}` `defines`. `name` labels errors.
pub fn preprocess(
    name: &str,
    source: &str,
    flags: &[(&str, bool)],
    defines: &[(&str, String)],
) -> Result<String> {
    let err = |line: usize, message: String| Error::Shader {
        name: name.to_string(),
        message: format!("line {}: {message}", line + 1),
    };
    let flag = |line: usize, word: &str| -> Result<bool> {
        let (negate, word) = match word.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, word),
        };
        flags
            .iter()
            .find(|(n, _)| *n == word)
            .map(|(_, v)| *v != negate)
            .ok_or_else(|| err(line, format!("unknown flag `{word}`")))
    };

    // Each stack entry: (this branch is active, some branch of this #if was already taken).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut out = String::with_capacity(source.len());
    for (i, line) in source.lines().enumerate() {
        let trimmed = line.trim();
        let parent_active = stack.iter().all(|(active, _)| *active);
        if let Some(rest) = trimmed.strip_prefix("#if ") {
            let cond = flag(i, rest.trim())?;
            stack.push((cond, cond));
            out.push('\n');
            continue;
        }
        if trimmed == "#else" {
            let top = stack
                .last_mut()
                .ok_or_else(|| err(i, "#else without #if".into()))?;
            top.0 = !top.1;
            top.1 = true;
            out.push('\n');
            continue;
        }
        if trimmed == "#endif" {
            stack
                .pop()
                .ok_or_else(|| err(i, "#endif without #if".into()))?;
            out.push('\n');
            continue;
        }
        if trimmed.starts_with('#') {
            return Err(err(i, format!("unknown directive `{trimmed}`")));
        }
        if !parent_active {
            // Keep line numbers stable so compiler errors point at the source line.
            out.push('\n');
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| err(i, "unterminated {{".into()))?;
            let key = after[..end].trim();
            let value = defines
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| err(i, format!("no value for `{{{{{key}}}}}`")))?;
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err(err(source.lines().count(), "missing #endif".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_and_defines() {
        let src = "a\n#if F16\nb {{N}}\n#else\nc\n#if !SG\nd\n#endif\n#endif\ne{{N}}{{M}}";
        let out = preprocess(
            "t",
            src,
            &[("F16", false), ("SG", false)],
            &[("N", "4".into()), ("M", "x".into())],
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines, ["a", "c", "d", "e4x"]);
        let out = preprocess(
            "t",
            src,
            &[("F16", true), ("SG", true)],
            &[("N", "4".into()), ("M", "".into())],
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines, ["a", "b 4", "e4"]);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = preprocess("k", "#if X\n", &[("X", true)], &[]).unwrap_err();
        assert!(e.to_string().contains("missing #endif"), "{e}");
        let e = preprocess("k", "#if Y\n#endif", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("unknown flag `Y`"), "{e}");
        let e = preprocess("k", "{{Z}}", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("Z"), "{e}");
        let e = preprocess("k", "#endif", &[], &[]).unwrap_err();
        assert!(e.to_string().contains("without #if"), "{e}");
    }
}
