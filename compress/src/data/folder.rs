//! Image folders: a flat folder of photos (unlabelled, e.g. calibration) or torchvision's
//! `ImageFolder` layout with one subfolder per class.

use std::path::{Path, PathBuf};

use super::error::DataError;

/// Deepest folder nesting followed below a class folder (guards against symlink cycles).
const MAX_DEPTH: usize = 32;

/// What an image folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderListing {
    /// Image files in load order.
    pub files: Vec<PathBuf>,
    /// Per file, the label (index into `class_names`); `None` for a flat folder.
    pub labels: Option<Vec<u32>>,
    /// Class names the labels index: the sorted folder names, or the caller's label list.
    pub class_names: Option<Vec<String>>,
}

/// `true` for names ending in `.jpg`, `.jpeg` or `.png`, in any case.
pub fn is_image_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg") || e.eq_ignore_ascii_case("png")
    })
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Entries of `dir` (hidden ones skipped) as (name, path, is_dir), following symlinks.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_hidden(&name) {
            continue;
        }
        // `metadata` follows symlinks (torchvision walks with followlinks=True).
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        out.push((name, path, meta.is_dir()));
    }
    Ok(out)
}

/// All image files below `dir`, in torchvision's order: `sorted(os.walk(dir))` (directories by
/// path string) and, within a directory, sorted file names.
fn walk_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut groups: Vec<(String, Vec<(String, PathBuf)>)> = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((current, depth)) = stack.pop() {
        let mut files = Vec::new();
        for (name, path, is_dir) in entries(&current)? {
            if is_dir {
                if depth >= MAX_DEPTH {
                    return Err(DataError::folder(&path, format!("nested deeper than {MAX_DEPTH} levels")));
                }
                stack.push((path, depth + 1));
            } else if is_image_file(&path) {
                files.push((name, path));
            }
        }
        files.sort();
        groups.push((current.to_string_lossy().into_owned(), files));
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(groups.into_iter().flat_map(|(_, files)| files.into_iter().map(|(_, p)| p)).collect())
}

fn normalise_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for word in name.split(|c: char| c.is_whitespace() || c == '_' || c == '-').filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push('_');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Matches class-folder names to the model's label list. For each folder, the first rule that
/// matches decides (a rule matching several labels is an error):
///
/// 1. the folder name equals a label;
/// 2. equal after lower-casing and treating runs of spaces, `_` and `-` alike
///    (`golden_retriever` ~ `Golden Retriever`);
/// 3. likewise equal to one of the comma-separated synonyms of a label
///    (`tench` ~ `tench, Tinca tinca`);
/// 4. the folder name is a decimal label index (`0`, `17`).
///
/// Two folders mapping to the same label are an error as well.
pub fn match_class_names(folders: &[String], labels: &[String]) -> Result<Vec<usize>, String> {
    let normalised: Vec<String> = labels.iter().map(|l| normalise_name(l)).collect();
    let synonyms: Vec<Vec<String>> =
        labels.iter().map(|l| l.split(',').map(normalise_name).filter(|s| !s.is_empty()).collect()).collect();
    let mut result = Vec::with_capacity(folders.len());
    let mut unknown = Vec::new();
    for folder in folders {
        let key = normalise_name(folder);
        let rules: [&dyn Fn(usize) -> bool; 3] =
            [&|i| labels[i] == *folder, &|i| !key.is_empty() && normalised[i] == key, &|i| {
                !key.is_empty() && synonyms[i].contains(&key)
            }];
        let mut found = None;
        for rule in rules {
            let hits: Vec<usize> = (0..labels.len()).filter(|&i| rule(i)).collect();
            match hits.as_slice() {
                [] => continue,
                [i] => {
                    found = Some(*i);
                    break;
                }
                many => {
                    let names: Vec<&str> = many.iter().take(4).map(|&i| labels[i].as_str()).collect();
                    return Err(format!("class folder `{folder}` matches several labels: {names:?}"));
                }
            }
        }
        if found.is_none() && !folder.is_empty() && folder.bytes().all(|b| b.is_ascii_digit()) {
            found = folder.parse::<usize>().ok().filter(|&i| i < labels.len());
        }
        match found {
            Some(i) => result.push(i),
            None => unknown.push(folder.as_str()),
        }
    }
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(8).copied().collect();
        return Err(format!(
            "{} class folder(s) match no label of the model ({} labels): {shown:?}{}",
            unknown.len(),
            labels.len(),
            if unknown.len() > shown.len() { " ..." } else { "" }
        ));
    }
    let mut seen = vec![None::<usize>; labels.len()];
    for (f, &i) in result.iter().enumerate() {
        if let Some(other) = seen[i] {
            return Err(format!(
                "class folders `{}` and `{}` both match label {i} `{}`",
                folders[other], folders[f], labels[i]
            ));
        }
        seen[i] = Some(f);
    }
    Ok(result)
}

/// Lists an image folder.
///
/// * Image files directly inside and no subfolder: a flat, unlabelled set (sorted by name).
/// * Subfolders and no image file directly inside: one class per subfolder, torchvision
///   `ImageFolder` style — classes are the sorted folder names (labels = position), or, with
///   `class_names`, each folder is matched to the model's label list by
///   [`match_class_names`]; files are listed recursively in torchvision's order.
///
/// Hidden entries (`.name`) are skipped; extensions `jpg`/`jpeg`/`png` in any case are
/// images. A folder mixing top-level images and subfolders or an empty class folder is an
/// error; no image at all is [`DataError::NoImages`].
pub fn list_image_folder(dir: &Path, class_names: Option<&[String]>) -> Result<FolderListing, DataError> {
    let all = entries(dir)?;
    let mut top_files: Vec<(String, PathBuf)> =
        all.iter().filter(|(_, p, d)| !d && is_image_file(p)).map(|(n, p, _)| (n.clone(), p.clone())).collect();
    let mut subdirs: Vec<(String, PathBuf)> =
        all.iter().filter(|(_, _, d)| *d).map(|(n, p, _)| (n.clone(), p.clone())).collect();
    if !top_files.is_empty() && !subdirs.is_empty() {
        return Err(DataError::folder(
            dir,
            "holds both image files and subfolders; use either a flat folder of images or one \
             subfolder per class",
        ));
    }
    if subdirs.is_empty() {
        if top_files.is_empty() {
            let skipped = all.iter().filter(|(_, _, d)| !d).count();
            return Err(DataError::NoImages { path: dir.to_path_buf(), skipped });
        }
        top_files.sort();
        return Ok(FolderListing {
            files: top_files.into_iter().map(|(_, p)| p).collect(),
            labels: None,
            class_names: class_names.map(<[String]>::to_vec),
        });
    }
    subdirs.sort();
    let folder_names: Vec<String> = subdirs.iter().map(|(n, _)| n.clone()).collect();
    let (label_of_folder, names) = match class_names {
        Some(labels) => {
            let mapping = match_class_names(&folder_names, labels).map_err(|m| DataError::folder(dir, m))?;
            (mapping, labels.to_vec())
        }
        None => ((0..folder_names.len()).collect(), folder_names.clone()),
    };
    let mut files = Vec::new();
    let mut labels = Vec::new();
    for ((_, path), &label) in subdirs.iter().zip(&label_of_folder) {
        let found = walk_images(path)?;
        if found.is_empty() {
            return Err(DataError::folder(path, "class folder holds no jpg/jpeg/png image"));
        }
        let label = u32::try_from(label).map_err(|_| DataError::overflow("class index"))?;
        labels.extend(std::iter::repeat(label).take(found.len()));
        files.extend(found);
    }
    Ok(FolderListing { files, labels: Some(labels), class_names: Some(names) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn matching_rules() {
        let labels = s(&["tench, Tinca tinca", "goldfish", "Golden Retriever", "T-shirt/top"]);
        assert_eq!(match_class_names(&s(&["goldfish"]), &labels), Ok(vec![1]));
        assert_eq!(match_class_names(&s(&["golden_retriever"]), &labels), Ok(vec![2]));
        assert_eq!(match_class_names(&s(&["Tinca-tinca"]), &labels), Ok(vec![0]));
        assert_eq!(match_class_names(&s(&["3"]), &labels), Ok(vec![3]));
        assert!(match_class_names(&s(&["7"]), &labels).is_err());
        assert!(match_class_names(&s(&["shark"]), &labels).is_err());
        assert!(match_class_names(&s(&["tench", "Tinca tinca"]), &labels).is_err());
    }
}
