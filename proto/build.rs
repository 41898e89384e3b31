//! Compiles the protobuf schema. Config messages also get serde derives so the
//! YAML operators write maps onto exactly the same types.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos: Vec<String> = std::fs::read_dir("proto/switchyard")?
        .flat_map(|d| d.ok())
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten())
        .flat_map(|d| d.ok())
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten())
        .flat_map(|d| d.ok())
        .map(|d| d.path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .map(|p| p.display().to_string())
        .collect();
    println!("cargo:rerun-if-changed=proto");
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .btree_map(".")
        .type_attribute(
            ".switchyard.config",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(deny_unknown_fields, default)]",
        )
        .compile_protos(&protos, &["proto".to_string()])?;
    Ok(())
}
