mod placeholder {}
mod image;
