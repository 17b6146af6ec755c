//! Image folders: flat calibration folders and torchvision's one-subfolder-per-class layout.

use std::path::{Path, PathBuf};

use factorvit::{Interpolation, Preprocess};
use factorvit_compress::data::{list_image_folder, load_dataset, DataError, LoadOptions, Rng};
use factorvit_compress::preprocess::{load_image_u8, preprocess_image};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("factorvit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a random RGB PNG of `w × h`.
fn png(path: &Path, w: u32, h: u32, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut rng = Rng::new(seed);
    let img = image::RgbImage::from_fn(w, h, |_, _| image::Rgb([rng.below(256) as u8, rng.below(256) as u8, 7]));
    img.save_with_format(path, image::ImageFormat::Png).unwrap();
}

fn small_preprocess() -> Preprocess {
    Preprocess {
        input_size: [3, 16, 16],
        mean: vec![0.5, 0.4, 0.3],
        std: vec![0.2, 0.25, 0.3],
        interpolation: Interpolation::Bicubic,
        crop_pct: 0.875,
    }
}

fn names(files: &[PathBuf], root: &Path) -> Vec<String> {
    files.iter().map(|f| f.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/")).collect()
}

#[test]
fn class_folders_follow_image_folder_conventions() {
    let dir = TempDir::new("folder-classes");
    let root = &dir.0;
    png(&root.join("dog/b.png"), 20, 24, 1);
    png(&root.join("dog/a.PNG"), 30, 18, 2);
    png(&root.join("dog/z/deep.png"), 17, 17, 3);
    png(&root.join("dog/.hidden.png"), 17, 17, 4);
    std::fs::write(root.join("dog/notes.txt"), "not an image").unwrap();
    png(&root.join("cat/c.png"), 25, 19, 5);
    png(&root.join(".cache/x.png"), 25, 19, 6);

    let listing = list_image_folder(root, None).unwrap();
    // Classes sorted; files per directory sorted, directories in os.walk-sorted order.
    assert_eq!(listing.class_names.as_deref(), Some(&["cat".to_string(), "dog".to_string()][..]));
    assert_eq!(names(&listing.files, root), ["cat/c.png", "dog/a.PNG", "dog/b.png", "dog/z/deep.png"]);
    assert_eq!(listing.labels.as_deref(), Some(&[0, 1, 1, 1][..]));

    let pre = small_preprocess();
    let ds = load_dataset(root, &pre, &LoadOptions::default()).unwrap();
    assert_eq!((ds.n, ds.c, ds.h, ds.w), (4, 3, 16, 16));
    assert_eq!(ds.labels.as_deref(), Some(&[0, 1, 1, 1][..]));
    for (i, file) in listing.files.iter().enumerate() {
        let img = load_image_u8(file).unwrap();
        assert_eq!(ds.sample(i), preprocess_image(img.view(), &pre).unwrap().as_slice());
    }

    // Against the model's label list: folder names matched, labels index the model's list.
    let labels: Vec<String> = ["tench", "Cat", "goldfish", "dog, domestic dog"].iter().map(|s| s.to_string()).collect();
    let opts = LoadOptions { class_names: Some(labels.clone()), ..LoadOptions::default() };
    let ds = load_dataset(root, &pre, &opts).unwrap();
    assert_eq!(ds.labels.as_deref(), Some(&[1, 3, 3, 3][..]));
    assert_eq!(ds.class_names, Some(labels));

    // A folder that matches no label is an error naming it.
    png(&root.join("zebra/q.png"), 20, 20, 8);
    let err = load_dataset(root, &pre, &opts).unwrap_err();
    assert!(matches!(err, DataError::Folder { .. }), "{err:?}");
    assert!(err.to_string().contains("zebra"), "{err}");
}

#[test]
fn flat_folder_is_unlabelled_and_bad_layouts_are_errors() {
    let dir = TempDir::new("folder-flat");
    let root = &dir.0;
    png(&root.join("b.jpg.png"), 20, 20, 1);
    png(&root.join("a.png"), 21, 20, 2);
    let listing = list_image_folder(root, None).unwrap();
    assert_eq!(names(&listing.files, root), ["a.png", "b.jpg.png"]);
    assert!(listing.labels.is_none());
    let ds = load_dataset(root, &small_preprocess(), &LoadOptions::default()).unwrap();
    assert_eq!(ds.n, 2);
    assert!(ds.labels.is_none());

    // Mixed layout.
    png(&root.join("sub/c.png"), 20, 20, 3);
    assert!(matches!(list_image_folder(root, None), Err(DataError::Folder { .. })));

    // Empty class folder.
    let dir2 = TempDir::new("folder-empty-class");
    png(&dir2.0.join("a/x.png"), 20, 20, 1);
    std::fs::create_dir_all(dir2.0.join("b")).unwrap();
    assert!(matches!(list_image_folder(&dir2.0, None), Err(DataError::Folder { .. })));

    // Nothing at all.
    let dir3 = TempDir::new("folder-nothing");
    assert!(matches!(list_image_folder(&dir3.0, None), Err(DataError::NoImages { skipped: 0, .. })));

    // A corrupt image names the file.
    let dir4 = TempDir::new("folder-corrupt");
    std::fs::write(dir4.0.join("broken.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    let err = load_dataset(&dir4.0, &small_preprocess(), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Image { .. }), "{err:?}");
    assert!(err.to_string().contains("broken.png"));
}
