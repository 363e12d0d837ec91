//! The netboot server inside the daemon reads `library:` images through the daemon's shared
//! cache: two netboot image sources (as two daemons' worth of readers would be) on one shared
//! cache fetch each chunk from the library once, and the bytes are the version's.

#[path = "support_netboot.rs"]
mod support_netboot;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use support_netboot::pattern;
use vmedia_io::{NoProgress, ReadAt};
use vmedia_library::{AddOptions, AddSource, ChunkCache, InitOptions, Library, OpenConfig};
use vmedia_netboot::files::ImageSource;
use vmedia_server::cache::{CacheOptions, SharedCache};
use vmedia_server::netboot::LibraryImages;

/// Several chunks' worth, so a shared read is more than one lucky chunk.
const IMAGE_LEN: usize = 3 << 20;

fn read_all(image: &dyn ReadAt) -> Vec<u8> {
    let size = image.size().unwrap() as usize;
    let mut out = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let n = image.read_at(&mut out[at..], at as u64).unwrap();
        assert!(n > 0, "short read at {at}");
        at += n;
    }
    out
}

#[test]
fn library_images_read_through_the_shared_cache_fetch_each_chunk_once() {
    let dir = tempfile::tempdir().unwrap();
    let library = Library::init(
        &OpenConfig::folder(dir.path().join("library"), "tester@host"),
        &InitOptions::default(),
    )
    .unwrap();
    let bytes = pattern(3, IMAGE_LEN);
    let file = dir.path().join("image.raw");
    std::fs::write(&file, &bytes).unwrap();
    library
        .add(
            "image",
            AddSource::File(file),
            &AddOptions::default(),
            &NoProgress,
        )
        .unwrap();
    let cache = Arc::new(
        SharedCache::new(&CacheOptions {
            memory_bytes: 64 << 20,
            disk: None,
        })
        .unwrap(),
    );
    let stats = Arc::clone(cache.stats());
    // Two sources, each with readers of its own: only the cache is shared.
    let first =
        LibraryImages::with_cache(library.clone(), Arc::clone(&cache) as Arc<dyn ChunkCache>);
    let (image, _) = first.open_image("image@1").unwrap();
    assert_eq!(read_all(&*image), bytes);
    let fetched = stats.backend_reads.load(Ordering::Relaxed);
    assert!(fetched > 1, "read {fetched} chunks from the library");
    assert!(
        cache.bytes() >= IMAGE_LEN as u64,
        "{} bytes cached",
        cache.bytes()
    );

    let second =
        LibraryImages::with_cache(library.clone(), Arc::clone(&cache) as Arc<dyn ChunkCache>);
    let (again, _) = second.open_image("image@1").unwrap();
    let hits_before = stats.hits.load(Ordering::Relaxed);
    assert_eq!(read_all(&*again), bytes);
    assert_eq!(
        stats.backend_reads.load(Ordering::Relaxed),
        fetched,
        "the second source went to the library instead of the shared cache"
    );
    assert!(stats.hits.load(Ordering::Relaxed) > hits_before);

    // Without a cache (a standalone `vmedia netboot serve`) the cache sees nothing.
    let plain = LibraryImages::with_refresh(library, Duration::ZERO);
    let (own, _) = plain.open_image("image@1").unwrap();
    let misses = stats.misses.load(Ordering::Relaxed);
    assert_eq!(read_all(&*own), bytes);
    assert_eq!(stats.misses.load(Ordering::Relaxed), misses);
}
