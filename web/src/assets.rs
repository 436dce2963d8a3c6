//! The static assets (CSS and JavaScript), embedded in the binary and served under
//! content-hashed names (`/static/app.3f2a1b9c0d4e.js`), so a browser may cache them for a
//! year (`Cache-Control: public, max-age=31536000, immutable`): a changed file gets a new
//! name, and the pages name the current one. Each also has a strong ETag for revalidation.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

/// URL prefix of the assets.
pub const STATIC_PREFIX: &str = "/static/";
/// `Cache-Control` of a hashed asset.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Hex digits of the content hash in a name.
const HASH_HEX: usize = 12;

/// One asset.
#[derive(Debug)]
pub struct Asset {
    /// Its file name in `web/static` (`app.js`).
    pub name: &'static str,
    /// The hashed file name it is served under (`app.3f2a1b9c0d4e.js`).
    pub file: String,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
    /// Strong ETag (quoted SHA-256 prefix).
    pub etag: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
        let digest = Sha256::digest(body);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let short = &hex[..HASH_HEX];
        let file = match name.rsplit_once('.') {
            Some((stem, ext)) => format!("{stem}.{short}.{ext}"),
            None => format!("{name}.{short}"),
        };
        Asset {
            name,
            file,
            content_type,
            body,
            etag: format!("\"{}\"", &hex[..32]),
        }
    }

    /// The URL the pages use.
    pub fn url(&self) -> String {
        format!("{STATIC_PREFIX}{}", self.file)
    }
}

/// Every asset, and the URLs the templates link to.
#[derive(Debug)]
pub struct Assets {
    /// The stylesheet's URL.
    pub css: String,
    /// The storefront script's URL.
    pub app_js: String,
    /// The dashboard script's URL.
    pub admin_js: String,
    /// The dashboard chart's script's URL.
    pub chart_js: String,
    list: Vec<Asset>,
}

impl Assets {
    /// The asset served as `file` (a hashed name), if any.
    pub fn get(&self, file: &str) -> Option<&Asset> {
        self.list.iter().find(|a| a.file == file)
    }

    /// The asset whose source file is `name` (`app.js`).
    pub fn by_name(&self, name: &str) -> Option<&Asset> {
        self.list.iter().find(|a| a.name == name)
    }

    /// All assets.
    pub fn all(&self) -> &[Asset] {
        &self.list
    }
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let list = vec![
        Asset::new(
            "style.css",
            "text/css; charset=utf-8",
            include_bytes!("../static/style.css"),
        ),
        Asset::new(
            "app.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../static/app.js"),
        ),
        Asset::new(
            "admin.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../static/admin.js"),
        ),
        Asset::new(
            "chart.js",
            "text/javascript; charset=utf-8",
            include_bytes!("../static/chart.js"),
        ),
    ];
    let url = |n: &str| {
        list.iter()
            .find(|a| a.name == n)
            .map(Asset::url)
            .unwrap_or_default()
    };
    Assets {
        css: url("style.css"),
        app_js: url("app.js"),
        admin_js: url("admin.js"),
        chart_js: url("chart.js"),
        list,
    }
});

/// The assets (hashed once, on first use).
pub fn assets() -> &'static Assets {
    &ASSETS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash() {
        let a = assets();
        assert_eq!(a.all().len(), 4);
        for asset in a.all() {
            let hex: String = Sha256::digest(asset.body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert!(asset.file.contains(&hex[..HASH_HEX]), "{}", asset.file);
            assert!(asset.etag.contains(&hex[..32]));
            assert_eq!(a.get(&asset.file).map(|x| x.name), Some(asset.name));
            assert!(!asset.body.is_empty());
        }
        assert!(a.css.starts_with("/static/style.") && a.css.ends_with(".css"));
        assert!(a.app_js.ends_with(".js") && a.admin_js.ends_with(".js"));
        assert!(a.chart_js.starts_with("/static/chart.") && a.chart_js.ends_with(".js"));
        assert!(a.get("app.js").is_none(), "unhashed names are not served");
        assert_eq!(a.by_name("app.js").map(Asset::url), Some(a.app_js.clone()));
    }

    #[test]
    fn different_content_different_name() {
        let x = Asset::new("x.js", "text/javascript", b"one");
        let y = Asset::new("x.js", "text/javascript", b"two");
        assert_ne!(x.file, y.file);
        assert_ne!(x.etag, y.etag);
    }
}
