//! The `upnp_request` fuzz body on stable: SSDP searches and the HTTP requests miniupnpc
//! sends, with random damage, then pure noise.

use natgate_fuzz::upnp_request::run;

/// A POST of `action` with `args` as miniupnpc writes it.
fn post(action: &str, args: &str) -> Vec<u8> {
    let service = "urn:schemas-upnp-org:service:WANIPConnection:2";
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{action} xmlns:u=\"{service}\">{args}</u:{action}></s:Body></s:Envelope>\r\n"
    );
    format!(
        "POST /ctl/IPConn HTTP/1.1\r\nHost: 100.64.0.1:5000\r\nContent-Length: {}\r\n\
         Content-Type: text/xml\r\nSOAPAction: \"{service}#{action}\"\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn add(client: &str, ext: u16, int: u16) -> Vec<u8> {
    post(
        "AddPortMapping",
        &format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{ext}</NewExternalPort>\
             <NewProtocol>TCP</NewProtocol><NewInternalPort>{int}</NewInternalPort>\
             <NewInternalClient>{client}</NewInternalClient><NewEnabled>1</NewEnabled>\
             <NewPortMappingDescription>a &amp; b</NewPortMappingDescription>\
             <NewLeaseDuration>0</NewLeaseDuration>"
        ),
    )
}

#[test]
fn seeds_and_random_inputs() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let key = "<NewRemoteHost></NewRemoteHost><NewExternalPort>6000</NewExternalPort>\
               <NewProtocol>TCP</NewProtocol>";
    let seeds: Vec<(u8, Vec<u8>)> = vec![
        (
            0,
            b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST: ssdp:all\r\n\
              MAN: \"ssdp:discover\"\r\nMX: 2\r\n\r\n"
                .to_vec(),
        ),
        (1, b"GET /rootDesc.xml HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (1, add("100.64.0.10", 6000, 6000)),
        (1, add("100.64.0.20", 6001, 6001)),
        (1, post("GetExternalIPAddress", "")),
        (
            1,
            post(
                "GetGenericPortMappingEntry",
                "<NewPortMappingIndex>0</NewPortMappingIndex>",
            ),
        ),
        (1, post("GetSpecificPortMappingEntry", key)),
        (1, post("DeletePortMapping", key)),
        (
            1,
            post(
                "GetListOfPortMappings",
                "<NewStartPort>1</NewStartPort><NewEndPort>65535</NewEndPort>\
                 <NewProtocol>TCP</NewProtocol><NewManage>1</NewManage>\
                 <NewNumberOfPorts>0</NewNumberOfPorts>",
            ),
        ),
    ];
    for round in 0..400u32 {
        let mut data = vec![(round % 4) as u8];
        for _ in 0..1 + next() % 6 {
            let (kind, mut req) = seeds[(next() % seeds.len() as u64) as usize].clone();
            for _ in 0..next() % 4 {
                let i = (next() % req.len() as u64) as usize;
                req[i] = next() as u8;
            }
            if next() % 5 == 0 {
                req.truncate((next() % req.len() as u64) as usize);
            }
            data.push(kind);
            data.extend_from_slice(&(req.len() as u16).to_be_bytes());
            data.extend_from_slice(&req);
        }
        run(&data);
        let noise: Vec<u8> = (0..next() % 200).map(|_| next() as u8).collect();
        run(&noise);
    }
}
