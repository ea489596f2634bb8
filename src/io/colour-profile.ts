/**
 * How image reads treat an embedded ICC profile, for the whole process. By default io/image converts such files to
 * sRGB (what the models are trained on); with keep-profile they give their stored values, as the reference
 * implementation (PIL) does. The CLI sets this once per command from --keep-profile. Kept apart from io/image so
 * that setting it does not load sharp.
 */
let keepProfile = false;

export function setKeepProfile(keep: boolean): void {
  keepProfile = keep;
}

/** The default of ReadImageOptions.keepProfile and ImageFolderOptions.keepProfile. */
export function keepProfileByDefault(): boolean {
  return keepProfile;
}
