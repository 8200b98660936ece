//! The simulator's wire format, in the form "a real PVE answers this request
//! like this": envelopes, reason phrases, status codes, 0/1 booleans,
//! numbers as strings where PVE sends them, form and JSON bodies, PVE's
//! parameter verification, and the generated client decoding all of it.

#[path = "sim/common.rs"]
mod common;

use common::*;
use fleeting_plugin_proxmox::pve::{CloneRequest, ErrorKind, Vmid};
use serde_json::{Value, json};

#[tokio::test]
async fn answers_decode_with_the_generated_types() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    assert_eq!(pve.version().await.unwrap().to_string(), "9.1.3");
    let vms = pve.cluster_vms().await.unwrap();
    let template = vms.iter().find(|vm| vm.vmid == Vmid(9000)).expect("the template is listed");
    assert!(template.template);
    assert_eq!(template.tags, ["ci", "template"]);
    assert_eq!(template.pool.as_deref(), Some("ci"));
    assert_eq!(pve.next_vmid(None).await.unwrap(), Vmid(100));
    let config = pve.vm_config("pve1", Vmid(9000)).await.unwrap();
    assert_eq!(config["ide2"], "local-lvm:vm-9000-cloudinit,media=cdrom");
    assert_eq!(config["digest"].len(), 40);
}

#[tokio::test]
async fn scalars_are_typed_the_perl_way() {
    let sim = start(fast_scenario()).await;
    let http = raw_client();
    let get = |path: &str| http.get(format!("{}{path}", sim.api_url())).header("Authorization", token_header()).send();

    // nextid is a JSON string.
    let body = get("/cluster/nextid").await.unwrap().text().await.unwrap();
    assert_eq!(body, r#"{"data":"100"}"#);

    // Config: integers and booleans as numbers, `number` options and the
    // 8.1+ `memory` property string as strings.
    let response = http
        .put(format!("{}/nodes/pve1/qemu/9000/config", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("cpulimit", "1.5"), ("onboot", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"data":null}"#);
    let config: Value = get("/nodes/pve1/qemu/9000/config").await.unwrap().json().await.unwrap();
    let data = &config["data"];
    assert_eq!(data["cores"], json!(2));
    assert_eq!(data["template"], json!(1));
    assert_eq!(data["onboot"], json!(1));
    assert_eq!(data["cpulimit"], json!("1.5"));
    assert_eq!(data["memory"], json!("2048"));

    // Resources: booleans 0/1, integral numbers without a fraction.
    let resources: Value = get("/cluster/resources?type=vm").await.unwrap().json().await.unwrap();
    let template = &resources["data"][0];
    assert_eq!(template["template"], json!(1));
    assert_eq!(template["maxcpu"].to_string(), "2", "Perl prints 2, not 2.0");
    assert_eq!(template["vmid"], json!(9000));
}

#[tokio::test]
async fn errors_carry_pve_text_in_the_reason_phrase() {
    let sim = start(fast_scenario()).await;
    let http = raw_client();
    // Permissions come first: the token may not even know whether VM 999 exists.
    let response = http
        .get(format!("{}/nodes/pve1/qemu/999/status/current", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(reason(&response), "Permission check failed (/vms/999, VM.Audit)");

    let (cookie, _) = root_ticket(&sim).await;
    let response = http
        .get(format!("{}/nodes/pve1/qemu/999/status/current", sim.api_url()))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(reason(&response), "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist");
    assert_eq!(response.headers()["connection"], "close", "pveproxy closes after every error");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "data": null, "message": "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist\n" })
    );

    // The template lives on pve1: asked on pve2, PVE's proxy finds no config.
    let response = http
        .get(format!("{}/nodes/pve2/qemu/9000/status/current", sim.api_url()))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(reason(&response), "Configuration file 'nodes/pve2/qemu-server/9000.conf' does not exist");

    let response = http
        .get(format!("{}/nodes/pve1/bogus", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 501);
    assert_eq!(reason(&response), "Method 'GET /nodes/pve1/bogus' not implemented");
    let response =
        http.post(format!("{}/version", sim.api_url())).header("Authorization", token_header()).send().await.unwrap();
    assert_eq!(reason(&response), "Method 'POST /version' not implemented");

    let err = root_client(&sim).vm_status("pve1", Vmid(999)).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let err = token_client(&sim).vm_status("pve1", Vmid(999)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PermissionDenied { .. }), "{err}");
}

#[tokio::test]
async fn parameter_verification_lists_each_parameter() {
    let sim = start(fast_scenario()).await;
    let http = raw_client();
    let response = http
        .post(format!("{}/nodes/pve1/qemu/9000/clone", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("newid", "50"), ("full", "true"), ("bogus", "1"), ("name", "not a dns name")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(reason(&response), "Parameter verification failed.");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"],
        json!({
            "newid": "value must have a minimum value of 100",
            "full": "type check ('boolean') failed - got 'true'",
            "bogus": "property is not defined in schema and the schema does not allow additional properties",
            "name": "invalid format - value does not look like a valid DNS name\n",
        })
    );
    let response = http
        .post(format!("{}/nodes/pve1/qemu/9000/clone", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("name", "x")])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"]["newid"], "property is missing and it is not optional");
    let response = http
        .get(format!("{}/cluster/resources?type=vms", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"]["type"], "value 'vms' does not have a value in the enumeration 'vm, storage, node, sdn'");

    // The project's client reads the map into its error.
    let request = CloneRequest { new_vmid: Some(Vmid(50)), ..Default::default() };
    let err = token_client(&sim).clone_vm("pve1", Vmid(9000), &request).await.unwrap_err();
    match err.kind() {
        ErrorKind::InvalidParameter { errors, .. } => {
            assert_eq!(errors["newid"], "value must have a minimum value of 100")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn json_bodies_work_and_json_booleans_depend_on_the_release() {
    let sim = start(fast_scenario()).await;
    let http = raw_client();
    let response = http
        .post(format!("{}/nodes/pve1/qemu/9000/clone", sim.api_url()))
        .header("Authorization", token_header())
        .json(&json!({ "newid": 120, "full": false, "name": "from-json", "pool": "ci" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", reason(&response));
    let upid: Value = response.json().await.unwrap();
    assert!(upid["data"].as_str().unwrap().starts_with("UPID:pve1:"));

    let mut old = fast_scenario();
    old.pve_version = "7.4.17".into();
    let old_sim = start(old).await;
    let response = http
        .post(format!("{}/nodes/pve1/qemu/9000/clone", old_sim.api_url()))
        .header("Authorization", token_header())
        .json(&json!({ "newid": 120, "full": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"]["full"], "type check ('boolean') failed - got JSON::PP::Boolean");
    assert!(body.get("message").is_none(), "before 8.4 error bodies carry no message");
}

#[tokio::test]
async fn extjs_answers_200_with_success_flag() {
    let sim = start(fast_scenario()).await;
    let (cookie, _) = root_ticket(&sim).await;
    let response = raw_client()
        .get(format!("{}/api2/extjs/nodes/pve1/qemu/999/status/current", sim.base_url()))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], json!(0));
    assert_eq!(body["status"], json!(500));
    assert_eq!(body["message"], "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist\n");
}

#[tokio::test]
async fn request_bodies_are_limited_like_pveproxy() {
    let mut scenario = fast_scenario();
    scenario.pve_version = "8.3.0".into();
    let sim = start(scenario).await;
    let large = "x".repeat(70 * 1024);
    let response = raw_client()
        .put(format!("{}/nodes/pve1/qemu/9000/config", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("description", large.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "64 KiB up to 8.3");
}
