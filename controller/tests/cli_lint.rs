//! `plover lint` on the examples as shipped (clean), and on a Canary with several mistakes
//! (each named, all at once, exit 1) — no cluster needed.

use std::path::Path;
use std::process::Output;

fn lint(args: &[&Path]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_plover"));
    command.arg("lint").arg("-f").arg(args[0]);
    for template in &args[1..] {
        command.arg("-t").arg(template);
    }
    command.output().unwrap()
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples")
}

#[test]
fn the_examples_are_clean() {
    for example in ["istio-hosts", "istio-subsets", "gateway-api"] {
        let dir = examples().join(example);
        let out = lint(&[
            &dir.join("canary.yaml"),
            &dir.join("analysis-templates.yaml"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{example}: {text}");
        assert!(text.trim_end().ends_with(": ok"), "{text}");
    }
}

#[test]
fn every_mistake_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(examples().join("istio-hosts/canary.yaml")).unwrap();
    // A weight above 100, and a reference to a template that is not given.
    let canary = example
        .replace("- setWeight: 50", "- setWeight: 150")
        .replace(
            "  - setWeight: 80",
            "  - analysis:\n      templates: [{templateName: latency}]\n  - setWeight: 80",
        );
    assert_ne!(canary, example);
    let canary_file = dir.path().join("canary.yaml");
    std::fs::write(&canary_file, canary).unwrap();
    // The template it does get has a condition that does not parse.
    let templates =
        std::fs::read_to_string(examples().join("istio-hosts/analysis-templates.yaml")).unwrap();
    let broken = templates.replace(
        "successCondition: result[0] > 0.95",
        "successCondition: result[0] >",
    );
    assert_ne!(broken, templates);
    let template_file = dir.path().join("templates.yaml");
    std::fs::write(&template_file, broken).unwrap();

    let out = lint(&[&canary_file, &template_file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let problems: Vec<&str> = text.lines().collect();
    assert_eq!(problems.len(), 3, "{text}");
    assert!(problems.iter().any(|p| p.contains("150")), "{text}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("template 'latency' is referenced but was not given")),
        "{text}"
    );
    assert!(
        problems.iter().any(|p| p.contains("successCondition")),
        "{text}"
    );
}
