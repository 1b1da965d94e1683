//! Which OpenAI-style API a request calls, from its method and path.
//!
//! Matching is by the path's last segments, so gateway prefixes (`/llm/v1/...`) and
//! Azure's shapes (`/openai/deployments/{deployment}/...?api-version=...`,
//! `/openai/v1/...`) are recognised without configuration. Anything else is not metered.

/// The API operation, named as the `Operation ID` dimension reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::ChatCompletions => "chat.completions",
            Operation::Completions => "completions",
            Operation::Embeddings => "embeddings",
            Operation::Responses => "responses",
        }
    }
}

/// A metered request's endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub operation: Operation,
    /// The Azure OpenAI deployment named in the path, if any.
    pub deployment: Option<String>,
}

/// Classifies a request; `None` means the request is not an LLM call and passes uncounted.
pub fn classify(method: &str, path: &str) -> Option<Endpoint> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_end_matches('/');
    let operation = if path.ends_with("/chat/completions") {
        Operation::ChatCompletions
    } else if path.ends_with("/completions") {
        Operation::Completions
    } else if path.ends_with("/embeddings") {
        Operation::Embeddings
    } else if path.ends_with("/responses") {
        Operation::Responses
    } else {
        return None;
    };
    Some(Endpoint {
        operation,
        deployment: azure_deployment(path),
    })
}

fn azure_deployment(path: &str) -> Option<String> {
    let (_, rest) = path.split_once("/openai/deployments/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(path: &str) -> Option<Operation> {
        classify("POST", path).map(|e| e.operation)
    }

    #[test]
    fn openai_paths_with_and_without_v1() {
        assert_eq!(op("/v1/chat/completions"), Some(Operation::ChatCompletions));
        assert_eq!(op("/chat/completions"), Some(Operation::ChatCompletions));
        assert_eq!(op("/v1/completions"), Some(Operation::Completions));
        assert_eq!(op("/completions"), Some(Operation::Completions));
        assert_eq!(op("/v1/embeddings"), Some(Operation::Embeddings));
        assert_eq!(op("/embeddings"), Some(Operation::Embeddings));
        assert_eq!(op("/v1/responses"), Some(Operation::Responses));
        assert_eq!(op("/responses"), Some(Operation::Responses));
        assert_eq!(
            op("/v1/chat/completions/"),
            Some(Operation::ChatCompletions)
        );
        assert_eq!(
            op("/v1/chat/completions?x=1"),
            Some(Operation::ChatCompletions)
        );
    }

    #[test]
    fn azure_paths_name_the_deployment() {
        let e = classify(
            "POST",
            "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
        )
        .unwrap();
        assert_eq!(e.operation, Operation::ChatCompletions);
        assert_eq!(e.deployment.as_deref(), Some("gpt4o-prod"));
        let e = classify(
            "POST",
            "/openai/deployments/emb/embeddings?api-version=2024-10-21",
        )
        .unwrap();
        assert_eq!(e.operation, Operation::Embeddings);
        assert_eq!(e.deployment.as_deref(), Some("emb"));
        let e = classify("POST", "/openai/v1/responses").unwrap();
        assert_eq!(e.operation, Operation::Responses);
        assert_eq!(e.deployment, None);
    }

    #[test]
    fn other_requests_are_not_metered() {
        assert_eq!(classify("GET", "/v1/chat/completions"), None);
        assert_eq!(op("/v1/models"), None);
        assert_eq!(op("/v1/responses/resp_123"), None);
        assert_eq!(op("/v1/responses/resp_123/cancel"), None);
        assert_eq!(op("/v1/chat/completions/chatcmpl-1/messages"), None);
        assert_eq!(op("/"), None);
        assert_eq!(op(""), None);
        assert_eq!(op("/healthz?path=/v1/embeddings"), None);
    }
}
