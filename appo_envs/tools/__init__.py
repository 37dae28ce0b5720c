"""Tools the environments expose to the agent."""
from appo_envs.tools.api_tool import ApiAdmin, ApiTool
from appo_envs.tools.base import Tool, ToolOutput, tool_schema, validate_arguments
from appo_envs.tools.http_transport import FAULT_BEHAVIOURS, FaultTransport
from appo_envs.tools.python_tool import PythonTool
from appo_envs.tools.search_tool import SearchTool

__all__ = ["ApiAdmin", "ApiTool", "FAULT_BEHAVIOURS", "FaultTransport", "PythonTool", "SearchTool", "Tool",
           "ToolOutput", "tool_schema", "validate_arguments"]
