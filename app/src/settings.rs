//! The app's settings: theme, desktop notifications and where saved files
//! go, kept in
//! `settings.json` in the data directory (nothing secret is in it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use iced::widget::{button, checkbox, column, container, row, space, text};
use iced::{Element, Fill, Task, Theme};
use serde::{Deserialize, Serialize};

/// The file, in the data directory.
pub const SETTINGS_FILE: &str = "settings.json";

/// Light or dark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThemeChoice {
    /// Dark text on light backgrounds.
    #[default]
    Light,
    /// Light text on dark backgrounds.
    Dark,
}

impl ThemeChoice {
    /// The iced theme.
    pub fn theme(self) -> Theme {
        crate::style::theme(self == ThemeChoice::Dark)
    }
}

/// What the user chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The theme.
    pub theme: ThemeChoice,
    /// Show a desktop notification for messages that arrive while the
    /// window is not focused.
    pub notifications: bool,
    /// Where saved files go; `None`: the desktop's downloads folder
    /// ([`Settings::downloads_dir`]).
    pub downloads: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            theme: ThemeChoice::Light,
            notifications: true,
            downloads: None,
        }
    }
}

impl Settings {
    /// Where saved files go: the folder chosen, else the desktop's
    /// downloads folder (`XDG_DOWNLOAD_DIR`), else `~/Downloads`.
    pub fn downloads_dir(&self) -> PathBuf {
        self.downloads
            .clone()
            .or_else(dirs::download_dir)
            .or_else(|| dirs::home_dir().map(|home| home.join("Downloads")))
            .unwrap_or_else(|| PathBuf::from("Downloads"))
    }

    /// Reads the settings in `dir`; defaults when there are none (or they
    /// cannot be read: settings are never worth refusing to start for).
    pub fn load(dir: &Path) -> Self {
        std::fs::read(dir.join(SETTINGS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Writes the settings to `dir` on the blocking pool. Saves may
    /// overlap (two quick changes): they are written one at a time, and one
    /// older than what is already on disk is skipped, so the file always
    /// ends with the newest settings.
    pub fn save(&self, dir: PathBuf) -> Task<Message> {
        /// The newest save made so far, and the newest one written.
        static MADE: AtomicU64 = AtomicU64::new(0);
        static WRITTEN: Mutex<u64> = Mutex::new(0);
        let settings = self.clone();
        let this = MADE.fetch_add(1, Ordering::Relaxed) + 1;
        Task::perform(
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut written = WRITTEN.lock().unwrap_or_else(PoisonError::into_inner);
                    if *written > this {
                        return Ok(());
                    }
                    std::fs::create_dir_all(&dir)?;
                    let json =
                        serde_json::to_vec_pretty(&settings).map_err(std::io::Error::other)?;
                    // Not secret, but replaced atomically: a crash leaves the
                    // old settings or the new ones, never half a file.
                    sotto_fsutil::write_atomic(&dir.join(SETTINGS_FILE), &json, 0o666)?;
                    *written = this;
                    Ok(())
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|written| written)
                .map_err(|e| format!("could not save the settings: {e}"))
            },
            Message::Saved,
        )
    }
}

/// What the settings screen does.
#[derive(Clone, Debug)]
pub enum Message {
    /// A theme was picked.
    Theme(ThemeChoice),
    /// Notifications on or off.
    Notifications(bool),
    /// Choose the downloads folder (the desktop's folder chooser).
    ChooseDownloads,
    /// The folder chooser closed: the folder chosen, if any.
    Downloads(Option<PathBuf>),
    /// The settings were written (or not).
    Saved(Result<(), String>),
    /// Close the settings.
    Close,
}

/// The desktop's folder chooser, for the downloads folder.
pub fn choose_downloads(current: PathBuf) -> Task<Message> {
    Task::perform(
        async move {
            rfd::AsyncFileDialog::new()
                .set_title("Save files in")
                .set_directory(current)
                .pick_folder()
                .await
                .map(|handle| handle.path().to_path_buf())
        },
        Message::Downloads,
    )
}

/// The settings screen.
pub fn view<'a>(settings: &Settings, error: Option<&'a str>) -> Element<'a, Message> {
    let choice = |label: &'static str, value: ThemeChoice| {
        button(text(label))
            .padding([6, 18])
            .style(if settings.theme == value {
                button::primary
            } else {
                button::secondary
            })
            .on_press(Message::Theme(value))
    };
    let theme = column![
        text("Theme").size(18),
        row![
            choice("Light", ThemeChoice::Light),
            choice("Dark", ThemeChoice::Dark)
        ]
        .spacing(8),
    ]
    .spacing(8);
    let notifications = column![
        text("Notifications").size(18),
        checkbox(settings.notifications)
            .label("Notify me of new messages while sotto is in the background")
            .on_toggle(Message::Notifications),
        text("Notifications say who wrote and where, never what: the text stays in sotto.")
            .size(13)
            .style(text::secondary),
    ]
    .spacing(8);
    let files = column![
        text("Files").size(18),
        row![
            text(format!(
                "Saved files go to {}",
                sotto_client::safe_text::multiline(&settings.downloads_dir().display().to_string())
            ))
            .wrapping(text::Wrapping::WordOrGlyph)
            .width(Fill),
            button(text("Change…").size(13))
                .style(button::secondary)
                .on_press(Message::ChooseDownloads),
        ]
        .spacing(8)
        .align_y(iced::Alignment::Center),
        text("A file is saved only when you ask; images up to 8 MiB are previewed without being kept.")
            .size(13)
            .style(text::secondary),
    ]
    .spacing(8);
    let mut content = column![
        row![
            text("Settings").size(26),
            space().width(Fill),
            button("Done").on_press(Message::Close)
        ],
        theme,
        notifications,
        files
    ]
    .spacing(24)
    .max_width(560);
    if let Some(error) = error {
        content = content.push(text(error).style(text::danger));
    }
    container(content).padding(32).center_x(Fill).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_default_when_missing_or_damaged() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()), Settings::default());
        std::fs::write(dir.path().join(SETTINGS_FILE), b"{not json").unwrap();
        assert_eq!(Settings::load(dir.path()), Settings::default());
        let chosen = Settings {
            theme: ThemeChoice::Dark,
            notifications: false,
            downloads: Some(dir.path().join("saved")),
        };
        let json = serde_json::to_vec(&chosen).unwrap();
        std::fs::write(dir.path().join(SETTINGS_FILE), json).unwrap();
        assert_eq!(Settings::load(dir.path()), chosen);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_saves_end_with_the_newest_settings() {
        let dir = tempfile::tempdir().unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let settings = Settings {
                theme: ThemeChoice::Dark,
                notifications: i % 2 == 0,
                downloads: None,
            };
            tasks.push(settings.save(dir.path().to_path_buf()));
        }
        // All at once, as iced's runtime would run them.
        let all = futures::stream::select_all(
            tasks
                .into_iter()
                .filter_map(iced_test::runtime::task::into_stream),
        );
        let outcomes: Vec<Message> = futures::StreamExt::collect::<Vec<_>>(all)
            .await
            .into_iter()
            .filter_map(|action| match action {
                iced_test::runtime::Action::Output(message) => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(outcomes.len(), 20);
        assert!(
            outcomes.iter().all(|m| matches!(m, Message::Saved(Ok(())))),
            "{outcomes:?}"
        );
        // The newest of the twenty (i = 19) has notifications off.
        assert!(!Settings::load(dir.path()).notifications);
    }
}
