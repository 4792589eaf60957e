//! Three domains on one host, the test component in every cell: `orders`
//! trusts its cells' calls (`trust_inside`) and exports `orders.back`,
//! which `orders.front` calls; `billing` checks them (`billing.front` calls
//! `billing.back`); `shop.front` calls `orders.back` across domains (shop
//! uses it). The same nested call three ways, for the domain tests and
//! `make bench`'s domain rows.

use std::path::Path;
use std::sync::Arc;

use cbs_host::bus::BodyBus;
use cbs_host::domain::spec::Spec;
use cbs_host::host::HostBuilder;

use crate::CellToml;

const SPECS: [&str; 3] = [
    "domain: orders\ntrust_inside: true\ncells:\n  - folder: orders.front\n  - folder: orders.back\nexports: [orders.back]\n",
    "domain: billing\ncells:\n  - folder: billing.front\n  - folder: billing.back\n",
    "domain: shop\ncells:\n  - folder: shop.front\nuses:\n  - domain: orders\n    cells: [orders.back]\n",
];

/// A host builder on `bus` serving the three domains, their cells written
/// into `dir`; `back` gives each `*.back` cell its contracts (its folder
/// is the second argument).
pub fn three(
    dir: &Path,
    bus: Arc<dyn BodyBus>,
    back: impl Fn(CellToml, &Path) -> CellToml,
) -> HostBuilder {
    for (id, calls) in [
        ("orders.front", &["orders.back"][..]),
        ("orders.back", &[]),
        ("billing.front", &["billing.back"]),
        ("billing.back", &[]),
        ("shop.front", &["orders.back"]),
    ] {
        let folder = dir.join(id);
        std::fs::create_dir_all(&folder).unwrap();
        let mut toml = CellToml::faulty(id).calls(calls);
        if id.ends_with(".back") {
            toml = back(toml, &folder);
        }
        toml.write_to(&folder);
    }
    let mut builder = crate::builder(bus);
    for text in SPECS {
        builder = builder.domain(&Spec::parse(text).unwrap(), dir).unwrap();
    }
    builder
}
