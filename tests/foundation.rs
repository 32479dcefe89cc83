//! The foundation works against the real services: a container created through bollard from a
//! fixture digest answers its health check on its Docker-network IP; an object goes through
//! the local S3 server and back with aws-sdk-s3 (slipway's S3 client); the fixtures behave as documented.

use bollard::models::{ContainerCreateBody, EndpointSettings, NetworkingConfig};
use bollard::query_parameters::CreateContainerOptionsBuilder;

use crate::support::{Env, Sandbox};

#[tokio::test]
async fn a_fixture_container_created_through_bollard_answers_health_on_its_network_ip() {
    let s = Sandbox::new();
    let env = Env::get();
    let docker = bollard::Docker::connect_with_local_defaults().unwrap().negotiate_version().await.unwrap();
    let name = format!("{}-bollard", s.id());
    let mut endpoints = std::collections::HashMap::new();
    endpoints.insert(s.network().to_string(), EndpointSettings::default());
    let body = ContainerCreateBody {
        image: Some(env.fixture("v1").to_string()),
        labels: Some([("slipway.test".to_string(), s.id().to_string())].into()),
        networking_config: Some(NetworkingConfig { endpoints_config: Some(endpoints) }),
        ..Default::default()
    };
    docker.create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body).await.unwrap();
    docker.start_container(&name, None).await.unwrap();
    let ip = s.container_ip(&name);
    assert!(!ip.starts_with("127."), "health must go to the container's own network address, got {ip}");
    let body = s.http_get(&format!("http://{ip}:8080/api/health"));
    assert!(body.starts_with("v1"), "{body}");
}

#[test]
fn the_fixtures_behave_as_documented() {
    let s = Sandbox::new();
    let env = Env::get();
    // crash exits at once with a non-zero code.
    let crash = s.add_tenant("crash", env.fixture("crash"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let c = s.inspect(&crash);
    let restarts = c["RestartCount"].as_i64().unwrap();
    assert!(restarts > 0 || c["State"]["ExitCode"].as_i64().unwrap() == 3, "{}", c["State"]);
    // unhealthy answers, but not 2xx.
    let bad = s.add_tenant("bad", env.fixture("unhealthy"));
    let ip = s.container_ip(&bad);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let code = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{ip}:8080/api/health")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout), "404");
    // noterm makes `docker stop` wait its whole timeout; v1 stops at once.
    for (fixture, min_s, max_s) in [("noterm", 4.0, 20.0), ("v2", 0.0, 3.0)] {
        let c = s.add_tenant(fixture, env.fixture(fixture));
        s.http_get(&format!("http://{}:8080/api/health", s.container_ip(&c)));
        let t = std::time::Instant::now();
        crate::support::sh(std::process::Command::new("docker").args(["stop", "-t", "4", &c]));
        let took = t.elapsed().as_secs_f64();
        assert!(took >= min_s && took < max_s, "{fixture}: docker stop took {took:.1}s");
    }
}

#[tokio::test]
async fn an_object_is_put_listed_and_read_back_through_s3() {
    let client = crate::offsite::s3_client();
    let bucket = format!("found-{}-{}", std::process::id(), rand_suffix());
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let body: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let key = "daily/2026-11-22/tenants/t1.tar.zst";
    client.put_object().bucket(&bucket).key(key).body(body.clone().into()).send().await.unwrap();
    let list = client.list_objects_v2().bucket(&bucket).prefix("daily/").send().await.unwrap();
    let keys: Vec<&str> = list.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, [key]);
    let got = client.get_object().bucket(&bucket).key(key).send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), body.as_slice());
    client.delete_object().bucket(&bucket).key(key).send().await.unwrap();
    client.delete_bucket().bucket(&bucket).send().await.unwrap();
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}
