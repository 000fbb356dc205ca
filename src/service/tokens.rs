//! Work on a local model's tokenizer and template without generating: tokenize, detokenize,
//! render a chat as the model would see it (apply-template), and count a prompt's tokens
//! (Anthropic's `count_tokens`). The model is resolved and leased like a generation's (a
//! persona's name means its model), so it loads if it must and stays within the RAM budget.
//!
//! Must not: know a wire format. A route or a provider's model is refused: its tokenizer is
//! on another server.

use super::{resolve, Caller, Service, ServiceError};
use crate::backend::{GenerateJob, PromptSpec, TextAnswer, TextWork};
use crate::resources::KeepAlive;

/// A job for rendering `prompt` only: no trimming, hearth's default options.
pub fn render_job(prompt: PromptSpec, num_ctx: u32) -> GenerateJob {
    GenerateJob {
        prompt,
        droppable: 0..0,
        options: crate::spec::options::OptionPatch::default().resolve(num_ctx),
        model_system: None,
        model_template: None,
        asked: Default::default(),
        tools: None,
        format: None,
    }
}

impl Service {
    /// Runs `work` on `model`, or on the one loaded model when no model is named (llama-server's
    /// routes name none).
    pub async fn model_text(&self, model: Option<&str>, keep_alive: Option<KeepAlive>, work: TextWork) -> Result<TextAnswer, ServiceError> {
        let model = match model.filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => match self.manager.loaded().as_slice() {
                [one] => one.entry.name.clone(),
                _ => return Err(ServiceError::Invalid("model is required (it may be left out only while exactly one model is loaded)".into())),
            },
        };
        let model = self.catalog().persona(&model).map_or(model, |p| p.model.clone());
        let table = self.router.table();
        if super::route::find(&table, &model).is_some() || table.remote(&model).is_some() {
            return Err(ServiceError::Invalid(format!("{model} is answered by another server: its tokenizer and template are not available here")));
        }
        let entry = resolve(&self.manager, &model, Caller::Network).await?;
        let lease = self.manager.acquire(entry, None, keep_alive).await?;
        let work = match work {
            TextWork::Render(mut job) => {
                job.model_system = lease.entry.defaults.system.clone();
                job.model_template = lease.entry.defaults.template.clone();
                TextWork::Render(job)
            }
            w => w,
        };
        let answer = std::sync::Arc::clone(&lease.model).text(work).await?;
        drop(lease);
        Ok(answer)
    }
}

